#!/usr/bin/env python3
"""imgfs benchmark driver (started by bench/run.sh, which installs the peers first).

Measures imgfs side by side with the native extracted tree, ratarmount, archivemount,
squashfuse, bubblewrap and docker, on two images:

  python     imgfs-test/debian-python:bookworm (tests/fixtures/make-debian-image.sh)
  synthetic  imgfs-bench/synthetic:1: the python rootfs plus 200,000 small files in 1000
             directories and one 2 GiB file, built once and cached under $IMGFS_BENCH_WORK

Writes bench/RESULTS.md and bench/chart.png (--quick: bench/results/RESULTS-quick.md and
bench/results/chart-quick.png), the summary as JSON and hyperfine's raw JSON under
bench/results/.

Usage: bench.py [--quick] [--images python,synthetic] [--no-correctness]
       bench.py _prep ACTION...   (internal: hyperfine --prepare steps, see prep())
"""

import argparse
import datetime
import json
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path

import common
from common import (BENCH, BWRAP_FLAGS, FIX, IDLE_THRESHOLD, IMGFS, RESULTS, ROOT, WORK, BenchError,
                    Runner, _kill, _wait_gone, _zombie, drop_caches, fmt_time, log, machine, out,
                    q, run, stop_shared, wait_idle)

PY = Path(sys.executable)  # the venv's python (ratarmount, matplotlib)
RATARMOUNT = PY.parent / "ratarmount"
MNT = WORK / "mnt"
LOGS = WORK / "logs"

PYTHON_REF = "imgfs-test/debian-python:bookworm"
SYNTH_REF = "imgfs-bench/synthetic:1"
SYNTH_VERSION = "1 dirs=1000 files=200 max=4096 big=2GiB links xattrs"
SYNTH_DIRS, SYNTH_FILES, SYNTH_MAX_SIZE = 1000, 200, 4096
BIG_MIB = 2048
BIG_PATH = "bench/big/blob.bin"
RANDREAD_COUNT, RANDREAD_SEED = 2000, 1234
CONTAINER_LABEL = "imgfs-bench=1"
EXPORT_CONTAINER = "imgfs-bench-export"
DISK_NEEDED_GB = {"python": 3, "synthetic": 22}

WALK_CMD = "find {m} -printf '%s %m %u\\n'"
READALL_CMD = "tar -C {m} -cf - . | cat >/dev/null"


def du_bytes(path):
    return int(out(["du", "-s", "--block-size=1", path]).split()[0])


# ---------------------------------------------------------------------------------------------
# Images and peers

class Image:
    def __init__(self, key):
        self.key = key
        self.dir = WORK / key
        if key == "python":
            self.label = "Debian python"
            self.ref = PYTHON_REF
            self.tar = FIX / "debian-python.tar"
            self.tree = self.dir / "rootfs"
        elif key == "synthetic":
            self.label = "synthetic (200k files + 2 GiB)"
            self.ref = SYNTH_REF
            self.tar = self.dir / "synthetic.tar"
            self.tree = self.dir / "rootfs"
        else:
            raise BenchError(f"unknown image {key}")
        self.sqfs = self.dir / "image.sqfs"
        self.ratar_index = self.dir / "ratarmount.index.sqlite"
        self.ratar_build_index = self.dir / "ratarmount-build.index.sqlite"
        self.entries = None
        self.tar_size = None

    def cache(self, kind):
        return WORK / "cache" / f"{self.key}-{kind}"

    def mnt(self, peer):
        if peer == "native":
            return self.tree
        return MNT / f"{self.key}-{peer}"


class Peer:
    def __init__(self, key, label, mount=None, umount=None, proc=None):
        self.key, self.label = key, label
        self.mount_argv, self.umount_argv, self.proc = mount, umount, proc

    @property
    def fuse(self):
        return self.mount_argv is not None


def _imgfs_mount(kind):
    def argv(img, m):
        src = img.ref if kind == "docker" else str(img.tar)
        return [IMGFS, "mount", "-q", "--cache-dir", img.cache(kind), src, m]
    return argv


def _fusermount_u(m):
    return ["fusermount", "-u", m]


PEERS = {p.key: p for p in [
    Peer("native", "native extracted tree"),
    Peer("imgfs", "imgfs (docker ref)", _imgfs_mount("docker"), lambda m: [IMGFS, "umount", m], "__serve"),
    Peer("imgfs-tar", "imgfs (tar path)", _imgfs_mount("tar"), lambda m: [IMGFS, "umount", m], "__serve"),
    Peer("imgfs-build", "imgfs index build", _imgfs_mount("build"), lambda m: [IMGFS, "umount", m], "__serve"),
    Peer("ratarmount", "ratarmount",
         lambda img, m: [RATARMOUNT, "--index-file", img.ratar_index, img.tar, m], _fusermount_u, "ratarmount"),
    Peer("ratarmount-build", "ratarmount index build",
         lambda img, m: [RATARMOUNT, "--index-file", img.ratar_build_index, img.tar, m], _fusermount_u, "ratarmount"),
    Peer("archivemount", "archivemount",
         lambda img, m: ["archivemount", "-o", "readonly", img.tar, m], _fusermount_u, "archivemount"),
    Peer("squashfuse", "squashfuse", lambda img, m: ["squashfuse", img.sqfs, m], _fusermount_u, "squashfuse"),
]}
FS_PEERS = ["native", "imgfs", "ratarmount", "archivemount", "squashfuse"]


def mountpoints():
    pts = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        p = line.split()[4]
        pts.add(re.sub(r"\\([0-7]{3})", lambda mo: chr(int(mo.group(1), 8)), p))
    return pts


def server_pids(img, peer):
    """The server processes of a mount: their command line ends with the mount point and names
    the server program as the program run (not merely as an argument, as hyperfine's does). For
    imgfs, the server and its keeper (the process holding the mount's connection)."""
    m = str(img.mnt(peer))
    prog = PEERS[peer].proc
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
        except OSError:
            continue
        if len(argv) < 2 or argv[-1] != m:
            continue
        if prog == "__serve":
            hit = argv[1] == "__serve"
        elif prog == "ratarmount":  # a python script: python3 .../ratarmount ...
            hit = Path(argv[0]).name == "ratarmount" or (
                Path(argv[0]).name.startswith("python") and Path(argv[1]).name == "ratarmount")
        else:
            hit = Path(argv[0]).name == prog
        if hit and not _zombie(int(d.name)):
            pids.append(int(d.name))
    # Ascending: a keeper (imgfs) before the server it forked, so that a forced stop kills it first.
    return sorted(pids)


def mount(img, peer, timeout=900):
    p = PEERS[peer]
    if not p.fuse:
        return
    m = img.mnt(peer)
    if str(m) in mountpoints():
        umount(img, peer)
    m.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    logf = LOGS / f"{img.key}-{peer}.log"
    with open(logf, "a") as lf:
        try:
            run(p.mount_argv(img, m), timeout=timeout, stdout=lf, stderr=lf, what=f"mounting {img.key} with {peer}")
        except BenchError as e:
            tail = logf.read_text(errors="replace").strip().splitlines()[-3:]
            raise BenchError(f"{e}; {logf}: {' | '.join(tail)}") from None
    deadline = time.time() + 30
    while str(m) not in mountpoints():
        if time.time() > deadline:
            raise BenchError(f"mounting {img.key} with {peer}: {m} is not a mount point 30 s after the command returned")
        time.sleep(0.01)
    os.stat(m)


def umount(img, peer, force=False):
    p = PEERS[peer]
    if not p.fuse:
        return
    m = img.mnt(peer)
    pids = server_pids(img, peer)
    if str(m) in mountpoints():
        if force:
            for pid in pids:
                _kill(pid)
        else:
            try:
                run(p.umount_argv(m), timeout=60, capture=True, what=f"unmounting {m}")
            except BenchError as e:
                log(f"WARNING: {e}; killing the server and unmounting lazily")
                for pid in pids:
                    _kill(pid)
        if str(m) in mountpoints():
            run(["umount", "-l", m], check=False, capture=True, timeout=60)
    m.mkdir(parents=True, exist_ok=True)  # a timed mount command may come next
    _wait_gone(pids, lambda pid: f"{peer} server {pid} for {m} still running 30 s after unmount")


def cleanup_all():
    """Unmount everything this suite mounted (all under WORK/mnt) and remove its containers."""
    stop_shared()
    for m in sorted(mountpoints(), reverse=True):
        if not m.startswith(str(MNT) + "/"):
            continue
        name = Path(m).name
        key, _, peer = name.partition("-")
        try:
            umount(Image(key), peer)
        except Exception as e:  # keep going: every mount must go
            log(f"WARNING: cleanup of {m}: {e}")
            run(["umount", "-l", m], check=False, capture=True, timeout=60)
    docker_clean()


def docker_clean():
    r = run(["docker", "ps", "-aq", "--filter", f"label={CONTAINER_LABEL}"], capture=True, check=False, timeout=60)
    ids = r.stdout.split() if r.returncode == 0 else []
    r = run(["docker", "ps", "-aq", "--filter", f"name=^{EXPORT_CONTAINER}$"], capture=True, check=False, timeout=60)
    ids += r.stdout.split() if r.returncode == 0 else []
    if ids:
        run(["docker", "rm", "-f", *ids], capture=True, check=False, timeout=120)


def prep(actions):
    """Steps run by hyperfine --prepare (through `bench.py _prep ...`):
    umount:IMG:PEER  mount:IMG:PEER  drop  rm:PATH  warm:PATH  docker-clean  docker-create:IMG
    stop-shared"""
    for a in actions:
        verb, _, rest = a.partition(":")
        if verb in ("umount", "mount"):
            key, peer = rest.split(":")
            (umount if verb == "umount" else mount)(Image(key), peer)
        elif verb == "drop":
            drop_caches()
        elif verb == "rm":
            p = Path(rest)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        elif verb == "mkdir":
            Path(rest).mkdir(parents=True, exist_ok=True)
        elif verb == "warm":
            with open(rest, "rb") as f:
                while f.read(1 << 22):
                    pass
        elif verb == "docker-clean":
            docker_clean()
        elif verb == "stop-shared":
            stop_shared()
        elif verb == "docker-create":
            docker_clean()
            run(["docker", "create", "--name", EXPORT_CONTAINER, "--label", CONTAINER_LABEL,
                 Image(rest).ref, "/bin/true"], capture=True, timeout=120)
        else:
            raise BenchError(f"_prep: unknown action {a}")


def prep_cmd(*actions):
    return q([PY, BENCH / "bench.py", "_prep", *actions])


def remount_actions(img, peer):
    if PEERS[peer].fuse:
        return [f"umount:{img.key}:{peer}", "drop", f"mount:{img.key}:{peer}", "drop"]
    return ["drop"]


# ---------------------------------------------------------------------------------------------
# Building the inputs

def ensure_python(img):
    marker = img.dir / "rootfs.done"
    st = img.tar.stat()
    stamp = f"{st.st_size} {st.st_mtime_ns}"
    if not (marker.exists() and marker.read_text() == stamp):
        log(f"extracting {img.tar} into {img.tree} (the native tree)")
        tmp = img.dir / "rootfs.tmp"
        for p in (tmp, img.tree):
            if p.exists():
                shutil.rmtree(p)
        tmp.mkdir(parents=True)
        run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", img.tar, "-C", tmp], capture=True)
        tmp.rename(img.tree)
        marker.write_text(stamp)


def ensure_synthetic(img, python_tree):
    marker = img.dir / "done"
    have_image = run(["docker", "image", "inspect", img.ref], capture=True, check=False).returncode == 0
    if marker.exists() and marker.read_text() == SYNTH_VERSION and img.tar.exists() and have_image:
        return
    img.dir.mkdir(parents=True, exist_ok=True)
    tree_marker = img.dir / "rootfs.done"
    if not (tree_marker.exists() and tree_marker.read_text() == SYNTH_VERSION and img.tree.is_dir()):
        build_synthetic_tree(img, python_tree)
        tree_marker.write_text(SYNTH_VERSION)
    if not (marker.exists() and marker.read_text() == SYNTH_VERSION and img.tar.exists()):
        log(f"tarring {img.tree} into {img.tar}")
        tmp = img.tar.with_suffix(".tar.tmp")
        t0 = time.time()
        run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-C", img.tree, "-cf", tmp, "."], capture=True)
        tmp.rename(img.tar)
        log(f"tar done in {time.time() - t0:.0f} s ({img.tar.stat().st_size / 1e9:.2f} GB)")
        run(["docker", "image", "rm", "-f", img.ref], capture=True, check=False)
        have_image = False
    if not have_image:
        log(f"docker import {img.tar} {img.ref}")
        t0 = time.time()
        run(["docker", "import", img.tar, img.ref], capture=True, timeout=3600)
        log(f"docker import done in {time.time() - t0:.0f} s")
    marker.write_text(SYNTH_VERSION)


def build_synthetic_tree(img, python_tree):
    tmp = img.dir / "rootfs.tmp"
    for p in (tmp, img.tree):
        if p.exists():
            shutil.rmtree(p)
    log(f"building the synthetic tree in {tmp}: copy of the python rootfs, "
        f"{SYNTH_DIRS} x {SYNTH_FILES} files of 0-{SYNTH_MAX_SIZE} bytes, one {BIG_MIB} MiB file")
    t0 = time.time()
    run(["cp", "-a", python_tree, tmp], capture=True)
    rng = random.Random(42)
    pool = rng.randbytes(1 << 16)
    small = tmp / "bench" / "small"
    for d in range(SYNTH_DIRS):
        dp = small / f"d{d:04d}"
        dp.mkdir(parents=True)
        for f in range(SYNTH_FILES):
            n = rng.randrange(SYNTH_MAX_SIZE + 1)
            off = rng.randrange(len(pool) - SYNTH_MAX_SIZE)
            with open(dp / f"f{f:03d}", "wb") as fh:
                fh.write(pool[off:off + n])
    # A few hard links and xattrs, so that the correctness checks have something to check.
    links = tmp / "bench" / "links"
    links.mkdir()
    for i in range(100):
        os.link(small / f"d{i:04d}" / "f000", links / f"l{i:03d}")
    for i in range(100):
        os.setxattr(small / f"d{i:04d}" / "f001", "user.imgfs.bench", f"value {i}".encode())
    cap = tmp / "bench" / "cap-file"
    cap.write_bytes(b"capability holder\n")
    # security.capability v2: cap_net_raw (bit 13) permitted + effective
    os.setxattr(cap, "security.capability",
                (0x02000001).to_bytes(4, "little") + (1 << 13).to_bytes(4, "little") + bytes(12))
    big = tmp / BIG_PATH
    big.parent.mkdir(parents=True)
    block = bytearray(random.Random(7).randbytes(1 << 20))
    with open(big, "wb") as fh:
        for i in range(BIG_MIB):
            block[:8] = i.to_bytes(8, "little")  # every 1 MiB block differs
            fh.write(block)
    tmp.rename(img.tree)
    log(f"synthetic tree built in {time.time() - t0:.0f} s")


def count_entries(img):
    cache = img.dir / "entries"
    st = img.tar.stat()
    stamp = f"{st.st_size} {st.st_mtime_ns}"
    if cache.exists():
        s, _, n = cache.read_text().partition("\n")
        if s == stamp:
            return int(n)
    r = run(f"tar -tf {shlex.quote(str(img.tar))} | wc -l", capture=True)
    n = int(r.stdout.strip())
    img.dir.mkdir(parents=True, exist_ok=True)
    cache.write_text(f"{stamp}\n{n}")
    return n


def ensure_mounted_once(img, peer):
    """First (untimed) mount, which fills imgfs' cache or builds ratarmount's index."""
    mount(img, peer)


# ---------------------------------------------------------------------------------------------
# Timing

# ---------------------------------------------------------------------------------------------
# The measurements, one image at a time; every result lands in R[image][section][what].

def bench_image(img, R, runner, correctness):
    r = R.setdefault(img.key, {})
    quick = runner.quick
    big = img.key == "synthetic"
    # Seconds one run of a peer may take before it counts as failed (shorter in a quick run).
    cap = 900 if big else (30 if quick else 120)
    info = r.setdefault("info", {})
    info.update(entries=img.entries, tar_bytes=img.tar_size, ref=img.ref, tar=str(img.tar))
    for k, other in R.items():
        # A server that hung on an earlier image hangs here too (the synthetic image contains the
        # python one): do not spend ten minutes per step finding that out again.
        if k != img.key:
            for peer, why in (other.get("hung") or {}).items():
                r.setdefault("hung", {})[peer] = f"it hung on the {k} image ({why})"

    # squashfs image (timed once), ratarmount's persistent index, imgfs caches.
    wait_idle("mksquashfs")
    if img.sqfs.exists():
        img.sqfs.unlink()
    t0 = time.perf_counter()
    run(["mksquashfs", img.tree, img.sqfs, "-noappend", "-no-progress", "-quiet",
         "-noI", "-noD", "-noF", "-noX"], capture=True, timeout=3600)
    info["mksquashfs_s"] = time.perf_counter() - t0
    log(f"{img.key}: mksquashfs {fmt_time(info['mksquashfs_s'])}")
    for peer in ("imgfs", "imgfs-tar", "ratarmount", "archivemount", "squashfuse"):
        try:
            ensure_mounted_once(img, peer)
        except BenchError as e:
            log(f"FAILED {e}")
            r.setdefault("setup_errors", {})[peer] = str(e)

    def ok(peer):
        return peer not in r.get("setup_errors", {}) and peer not in r.get("hung", {})

    # 7. Index build from a tar on disk with a warm page cache.
    sec = r.setdefault("index_build", {})
    for peer, rm in (("imgfs-build", img.cache("build")), ("ratarmount-build", img.ratar_build_index)):
        m = img.mnt(peer)
        sec[peer] = runner.measure(
            f"{img.key}-index-build-{peer}", q(PEERS[peer].mount_argv(img, m)),
            prepare=prep_cmd(f"umount:{img.key}:{peer}", f"rm:{rm}", f"warm:{img.tar}"),
            cap=cap, max_runs=5 if big else None)
        umount(img, peer)

    # 1. Cold start: image only in dockerd -> python3 -c pass done.
    sec = r.setdefault("cold_start", {})
    cold = WORK / "cold"
    cold.mkdir(parents=True, exist_ok=True)
    cold_runs = dict(max_runs=3 if big else 11)
    sec["imgfs"] = runner.measure(
        f"{img.key}-cold-imgfs",
        q([IMGFS, "run", "--network", "none", "--cache-dir", cold / "cache", img.ref, "--", "python3", "-c", "pass"]),
        prepare=prep_cmd("stop-shared", f"rm:{cold / 'cache'}", "drop"), cap=cap, **cold_runs)
    stop_shared()
    sec["export"] = runner.measure(
        f"{img.key}-cold-docker-export",
        q(["docker", "export", "-o", cold / "export.tar", EXPORT_CONTAINER]),
        prepare=prep_cmd(f"rm:{cold / 'export.tar'}", f"docker-create:{img.key}", "drop"), cap=cap, **cold_runs)
    d = cold / "unpack"
    unpack = (f"c=$(docker create --label {CONTAINER_LABEL} {q([img.ref])} /bin/true) && "
              f"docker export \"$c\" | tar -x -C {d} && docker rm \"$c\" >/dev/null && "
              + q(["bwrap", "--bind", d, "/", *BWRAP_FLAGS, "python3", "-c", "pass"]))
    sec["unpack"] = runner.measure(
        f"{img.key}-cold-export-untar-bwrap", unpack, shell=True,
        prepare=prep_cmd("docker-clean", f"rm:{d}", f"mkdir:{d}", "drop"), cap=cap, **cold_runs)
    prep(["docker-clean", f"rm:{cold}"])

    # 2. Warm mount ready.
    sec = r.setdefault("mount_ready", {})
    for peer in ("imgfs", "imgfs-tar", "ratarmount", "archivemount", "squashfuse"):
        if not ok(peer):
            sec[peer] = skipped(r, peer)
            continue
        sec[peer] = runner.measure(
            f"{img.key}-mount-{peer}", q(PEERS[peer].mount_argv(img, img.mnt(peer))),
            prepare=prep_cmd(f"umount:{img.key}:{peer}"), cap=cap,
            max_runs=(10 if quick else 30) if peer.startswith("imgfs") else None)
        if str(img.mnt(peer)) not in mountpoints():
            mount(img, peer)
    umount(img, "imgfs-tar")

    # 3. Warm run.
    # imgfs twice: as a user gets it, where the first run of an image leaves a shared server
    # for later runs (--linger, default 5 min), and with `--linger 0` and no live mount, where
    # every run serves the image with its own FUSE server, from cold kernel caches.
    sec = r.setdefault("warm_run", {})
    # No network, as bwrap's (--unshare-net); bench/sandbox.py measures the default bridge.
    run_argv = [IMGFS, "run", "--network", "none", "--cache-dir", img.cache("docker"), img.ref, "--",
                "python3", "-c", "pass"]
    umount(img, "imgfs")
    stop_shared()
    sec["imgfs-private"] = runner.measure(
        f"{img.key}-run-imgfs-private", q(run_argv[:2] + ["--linger", "0"] + run_argv[2:]),
        cap=cap, max_runs=10 if quick else 30, warmup=1)
    sec["imgfs"] = runner.measure(
        f"{img.key}-run-imgfs", q(run_argv), cap=cap, max_runs=10 if quick else 30, warmup=1)
    stop_shared()
    sec["bwrap"] = runner.measure(
        f"{img.key}-run-bwrap", q(["bwrap", "--ro-bind", img.tree, "/", *BWRAP_FLAGS, "python3", "-c", "pass"]),
        cap=cap, max_runs=10 if quick else 30, warmup=1)
    # The floor of any run that starts its own FUSE server: the same bwrap start over an imgfs
    # mount made just before (warm page cache for the archive, cold kernel caches for the
    # mount), with none of imgfs run's own work. What it costs over bwrap on the extracted
    # tree is what filling a new mount's kernel caches costs.
    sec["bwrap-fresh-imgfs"] = runner.measure(
        f"{img.key}-run-bwrap-fresh-imgfs",
        q(["bwrap", "--ro-bind", img.mnt("imgfs"), "/", *BWRAP_FLAGS, "python3", "-c", "pass"]),
        prepare=prep_cmd(f"umount:{img.key}:imgfs", f"mount:{img.key}:imgfs"),
        cap=cap, max_runs=10 if quick else 30)
    umount(img, "imgfs")
    sec["docker"] = runner.measure(
        f"{img.key}-run-docker", q(["docker", "run", "--rm", img.ref, "python3", "-c", "pass"]),
        cap=cap, warmup=1)

    # 4./5. Metadata walk and read-all, cold (remount + drop caches before each run) and warm.
    for section, template, shell in (("walk", WALK_CMD, False), ("readall", READALL_CMD, True)):
        for temp in ("cold", "warm"):
            sec = r.setdefault(f"{section}_{temp}", {})
            for peer in FS_PEERS:
                if not ok(peer):
                    sec[peer] = skipped(r, peer)
                    continue
                if temp == "warm" and r[f"{section}_cold"].get(peer, {}).get("timeout"):
                    sec[peer] = {"error": "skipped: the cold run did not finish", "timeout": True}
                    continue
                m = img.mnt(peer)
                try:
                    if PEERS[peer].fuse and str(m) not in mountpoints():
                        mount(img, peer)
                except BenchError as e:
                    sec[peer] = {"error": str(e)}
                    continue
                res = runner.measure(
                    f"{img.key}-{section}-{temp}-{peer}", template.format(m=shlex.quote(str(m))), shell=shell,
                    prepare=prep_cmd(*remount_actions(img, peer)) if temp == "cold" else None,
                    cap=600 if big else 120, warmup=1 if temp == "warm" else 0)
                if res.get("error"):
                    umount(img, peer, force=True)
                    if section == "walk" and res.get("timeout"):
                        # A server that cannot finish a walk hangs every later step too.
                        r.setdefault("hung", {})[peer] = (f"its metadata walk did not finish within "
                                                          f"{600 if big else 120} s")
                sec[peer] = res

    # 5b. Random 4 KiB reads in the 2 GiB file (cold: remount + drop caches first).
    if big:
        sec = r.setdefault("randread", {})
        limit = 20 if quick else 60
        for peer in FS_PEERS:
            if not ok(peer):
                sec[peer] = skipped(r, peer)
                continue
            sec[peer] = randread(img, peer, runs=3 if quick else 5, limit=limit)

    # 6. Server memory after a walk and a read-all on a fresh mount.
    sec = r.setdefault("memory", {})
    for peer in FS_PEERS[1:]:
        if not ok(peer):
            sec[peer] = skipped(r, peer)
            continue
        sec[peer] = memory_after_use(img, peer, r, cap)

    # 8. Recovery: kill -9 of a mount's server, whose keeper starts another on the same
    # connection, to the first request the new server answers; beside it, a new mount of the
    # same image (index cached, page cache dropped): what a user would do without a keeper.
    if not big and ok("imgfs-tar"):
        sec = r.setdefault("recovery", {})
        sec["kill-to-answer"] = recovery(img, "imgfs-tar", runs=20)
        sec["remount"] = runner.measure(
            f"{img.key}-remount-cold-imgfs-tar", q(PEERS["imgfs-tar"].mount_argv(img, img.mnt("imgfs-tar"))),
            prepare=prep_cmd(f"umount:{img.key}:imgfs-tar", "drop"), cap=cap, max_runs=10 if quick else 20)
        umount(img, "imgfs-tar")

    # 6b. Index size and disk use.
    r["sizes"] = sizes(img)
    if correctness:
        r["correctness"] = check_correctness(img, r)
    for peer in FS_PEERS + ["imgfs-tar"]:
        umount(img, peer)


def skipped(r, peer):
    if peer in r.get("setup_errors", {}):
        return {"error": "set-up failed: " + r["setup_errors"][peer]}
    return {"error": "skipped: " + r["hung"][peer], "skipped": True}


def randread(img, peer, runs, limit):
    m = img.mnt(peer)
    res = []
    for i in range(runs):
        wait_idle(f"{img.key} random reads on {peer}")
        try:
            prep(remount_actions(img, peer))
            o = out([PY, BENCH / "randread.py", m / BIG_PATH, RANDREAD_COUNT, RANDREAD_SEED, limit],
                    timeout=limit + 120)
        except BenchError as e:
            log(f"FAILED random reads on {peer}: {e}")
            umount(img, peer, force=True)
            return {"error": str(e)}
        res.append(json.loads(o))
        if res[-1]["reads"] < RANDREAD_COUNT:
            break  # hit the time limit: one run says enough
    per_read = [x["seconds"] / x["reads"] for x in res]
    st = {"median_per_read": statistics.median(per_read), "runs": len(res), "raw": res,
          "complete": all(x["reads"] == RANDREAD_COUNT for x in res)}
    st["median"] = st["median_per_read"] * RANDREAD_COUNT if st["complete"] else None
    log(f"{img.key} random reads on {peer}: {st['median_per_read'] * 1e6:.0f} us/read"
        + ("" if st["complete"] else f" (only {res[-1]['reads']} reads in {limit} s)"))
    return st


def parent_pid(pid):
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def serving_pid(img, peer, not_=()):
    """The one process answering the mount (not its keeper, the `__serve` that forked it), once
    there is one other than those in `not_`; None after 10 s."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = server_pids(img, peer)
        leaves = [p for p in pids if not any(parent_pid(o) == p for o in pids)]
        if len(leaves) == 1 and leaves[0] not in not_:
            return leaves[0]
        time.sleep(0.005)
    return None


def recovery(img, peer, runs):
    """kill -9 of the server of a live mount, to the first lookup the next server answers: a
    name never asked for before, which the kernel cannot answer from its caches. The clock
    starts at the kill; the lookup is made once the killed process is gone, so that only the
    new server can answer it."""
    m = img.mnt(peer)
    try:
        if str(m) not in mountpoints():
            mount(img, peer)
    except BenchError as e:
        return {"error": str(e)}
    times, killed = [], []
    for i in range(runs):
        wait_idle(f"{img.key} recovery on {peer}")
        pid = serving_pid(img, peer, killed)
        if pid is None:
            return {"error": f"no single server after {len(times)} recoveries"}
        probe = m / f".imgfs-recovery-{os.getpid()}-{i}"
        t0 = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        while not _zombie(pid):
            pass
        try:
            os.stat(probe)
            return {"error": f"{probe} exists"}
        except FileNotFoundError:
            times.append(time.perf_counter() - t0)
        except OSError as e:
            return {"error": f"the first lookup after kill -9 failed: {e}"}
    st = {"median": statistics.median(times), "runs": len(times), "raw": times,
          "min": min(times), "max": max(times),
          "stddev": statistics.stdev(times) if len(times) > 1 else 0.0}
    log(f"{img.key} recovery on {peer}: median {st['median'] * 1e3:.1f} ms over {len(times)} kills")
    return st


def memory_after_use(img, peer, r, cap):
    m = img.mnt(peer)
    note = []
    try:
        prep([f"umount:{img.key}:{peer}", f"mount:{img.key}:{peer}"])
        run(["find", m, "-printf", "%s %m %u\n"], capture=True, timeout=cap, what=f"walk of {m}")
        if r.get("readall_cold", {}).get(peer, {}).get("timeout"):
            note.append("read-all skipped (it did not finish in the timed runs)")
        else:
            res = run(f"tar -C {shlex.quote(str(m))} -cf - . | wc -c", capture=True, check=False, timeout=cap,
                      what=f"read-all of {m}")
            note.append(f"tar stream {int(res.stdout.split()[0])} bytes")
            errs = [l for l in res.stderr.splitlines() if "socket ignored" not in l]
            if errs:
                note.append(f"tar said: {errs[0]}" + (f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""))
    except BenchError as e:
        log(f"FAILED memory run on {peer}: {e}")
        note.append(f"failed: {e}")
    pids = server_pids(img, peer)
    if not pids:
        umount(img, peer, force=True)
        return {"error": "no server process found", "note": note}
    mem = {"private": 0, "anon": 0, "rss": 0, "hwm": 0, "pids": pids, "note": note}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                k, _, v = line.partition(":")
                if k in ("Private_Clean", "Private_Dirty"):
                    mem["private"] += int(v.split()[0]) * 1024
                elif k == "Anonymous":
                    mem["anon"] += int(v.split()[0]) * 1024
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                k, _, v = line.partition(":")
                if k == "VmRSS":
                    mem["rss"] += int(v.split()[0]) * 1024
                elif k == "VmHWM":
                    mem["hwm"] += int(v.split()[0]) * 1024
        except OSError as e:
            note.append(f"reading /proc/{pid}: {e}")
    log(f"{img.key} {peer} server: private {mem['private'] / 2**20:.1f} MiB (anonymous "
        f"{mem['anon'] / 2**20:.1f} MiB), VmRSS {mem['rss'] / 2**20:.1f} MiB")
    return mem


def sizes(img):
    s = {}
    idx = list((img.cache("docker") / "images").glob("*/index"))
    if idx:
        s["imgfs_index"] = idx[0].stat().st_size
    if img.ratar_index.exists():
        s["ratarmount_index"] = img.ratar_index.stat().st_size
    s["disk"] = {
        "imgfs cache, docker source (archive.tar + index)": du_bytes(img.cache("docker")),
        "imgfs cache, tar source (index only)": du_bytes(img.cache("tar")),
        "ratarmount index": du_bytes(img.ratar_index) if img.ratar_index.exists() else None,
        "squashfs image (uncompressed)": du_bytes(img.sqfs),
        "extracted tree": du_bytes(img.tree),
        "tar archive": du_bytes(img.tar),
    }
    return s


# ---------------------------------------------------------------------------------------------
# Correctness of each peer's view against the extracted tree

LIST_FMT = "%P\\t%y\\t%m\\t%U\\t%G\\t%s\\t%T@\\t%l\\t%i\\t%n\\0"
FIELDS = ["type", "mode", "uid", "gid", "size", "mtime", "link"]


def listing(root, timeout):
    # find's -printf reads the \\t and \\0 escapes itself (a NUL cannot be in an argument).
    o = run(["find", root, "-printf", LIST_FMT],
            capture=True, timeout=timeout, what=f"listing {root}").stdout
    entries = {}
    for rec in o.split("\0"):
        if not rec:
            continue
        p, y, mo, u, g, sz, mt, l, ino, n = rec.split("\t")
        if p == "":
            continue  # the mount point itself
        entries[p] = {"type": y, "mode": mo, "uid": u, "gid": g, "size": sz if y != "d" else "-",
                      "mtime": mt, "link": l, "ino": ino, "nlink": n}
    return entries


def xattrs(root, timeout):
    r = run(["getfattr", "-R", "-P", "-h", "-d", "-m", "-", "-e", "hex", "--absolute-names", root],
            capture=True, check=False, timeout=timeout, what=f"getfattr on {root}")
    res, cur = {}, None
    prefix = str(root).rstrip("/") + "/"
    for line in r.stdout.splitlines():
        if line.startswith("# file: "):
            f = line[8:]
            cur = f[len(prefix):] if f.startswith(prefix) else ""
        elif "=" in line and cur is not None:
            k, _, v = line.partition("=")
            if k != "security.selinux":
                res.setdefault(cur, {})[k] = v
    return res


# What docker's init layer adds to or replaces in every container it creates, and the
# directories holding it (tests/inspect.rs's INIT_LAYER): these carry that container's
# creation time, so two exports of one image differ in their mtimes, whoever made them.
PER_CONTAINER = (".dockerenv", "dev", "dev/console", "etc", "etc/hostname", "etc/hosts", "etc/mtab",
                 "etc/resolv.conf")


def docker_export_tree(img):
    """tar -x of an export docker makes now: `docker create` of the image (never started),
    `docker export` of that container straight into tar -x, the container removed. Made afresh
    on every call, so that the docker-ref mount is compared with docker's export, not with the
    archive imgfs itself exported into its cache (the archive it serves)."""
    tree = img.dir / "docker-export-rootfs"
    for old in (tree, img.dir / "export-rootfs", img.dir / "export-rootfs.done"):
        prep([f"rm:{old}"])  # the last two: what earlier versions of this script kept
    tree.mkdir(parents=True)
    prep([f"docker-create:{img.key}"])
    try:
        run(["bash", "-o", "pipefail", "-c",
             'docker export "$1" | tar --xattrs --xattrs-include="*" --numeric-owner -xpf - -C "$2"',
             "docker-export", EXPORT_CONTAINER, tree], capture=True, timeout=1800,
            what=f"docker export of {img.ref} | tar -x")
    finally:
        docker_clean()
    return tree


def not_compared(why):
    """A correctness row whose comparison was not made, saying why."""
    return {"ok": None, "compared": False, "notes": [why]}


def check_correctness(img, r):
    log(f"{img.key}: correctness checks against the extracted tree")
    timeout = 300

    def reference(tree):
        native = listing(tree, timeout)
        nx = xattrs(tree, timeout)
        groups = {}
        for p, e in native.items():
            if e["type"] != "d" and int(e["nlink"]) > 1:
                groups.setdefault(e["ino"], []).append(p)
        groups = [g for g in groups.values() if len(g) > 1]
        regular = sorted(p for p, e in native.items() if e["type"] == "f")
        sample = regular[:: max(1, len(regular) // 200)]
        return tree, native, nx, groups, sample

    tar_ref = reference(img.tree)
    _, native, nx, groups, _ = tar_ref
    res = {"native": {"entries": len(native), "xattr_files": len(nx), "hardlink_groups": len(groups)}}
    for peer in ["imgfs", "imgfs-tar", "ratarmount", "archivemount", "squashfuse"]:
        m = img.mnt(peer)
        if peer in r.get("hung", {}) or peer in r.get("setup_errors", {}):
            res[peer] = not_compared(skipped(r, peer)["error"])
            continue
        tree, native, nx, groups, sample = tar_ref
        against, own_mtime = "the tar, tar -x", ()
        if peer == "imgfs":
            # The docker source is docker's export, which is not the tar: docker adds .dockerenv,
            # /etc/hosts, /dev/console, ... So its reference is tar -x of an export docker makes
            # now, from a container of its own.
            try:
                tree, native, nx, groups, sample = reference(docker_export_tree(img))
            except BenchError as e:
                res[peer] = not_compared(f"could not make and extract docker's export: {e}")
                prep([f"rm:{img.dir / 'docker-export-rootfs'}"])
                continue
            against = "tar -x of `docker export` of a container docker created in this run"
            own_mtime = [p for p in PER_CONTAINER if p in native]
        try:
            mount(img, peer)
            got = listing(m, timeout)
        except BenchError as e:
            res[peer] = not_compared(f"could not list: {e}")
            umount(img, peer, force=True)
        else:
            res[peer] = compare_view(peer, m, got, tree, native, nx, groups, sample, timeout, against, own_mtime)
            log(f"{img.key} {peer}: {'; '.join(res[peer]['notes'])}")
        if tree != img.tree:
            prep([f"rm:{tree}"])  # the synthetic image's is 3 GB
    return res


def compare_view(peer, m, got, tree, native, nx, groups, sample, timeout, against, own_mtime=()):
    """The mount at m (listed as got) against the reference tree; differences make the row
    DIFFERS, checks that could not be made are said and left out of the "identical" claim.
    own_mtime: entries whose mtime is the reference's own (a container's creation time), not
    compared and said so."""
    diffs, unchecked = [], []
    if own_mtime:
        unchecked.append(f"mtime not compared on the {len(own_mtime)} entries docker writes into each "
                         f"container it creates, which carry that container's creation time "
                         f"({', '.join(own_mtime)})")
    missing = sorted(set(native) - set(got))
    extra = sorted(set(got) - set(native))
    if missing:
        diffs.append(f"{len(missing)} entries missing (e.g. {', '.join(missing[:3])})")
    if extra:
        diffs.append(f"{len(extra)} entries not in the tree (e.g. {', '.join(extra[:3])})")
    for f in FIELDS:
        bad = [p for p in native if p in got and native[p][f] != got[p][f]
               and not (f == "mtime" and p in own_mtime)]
        if bad:
            p = bad[0]
            diffs.append(f"{f} differs on {len(bad)} entries (e.g. {p}: tree {native[p][f]!r}, "
                         f"{peer} {got[p][f]!r})")
    broken = nl = 0
    for g in groups:
        if any(p not in got for p in g):
            continue
        if len({got[p]["ino"] for p in g}) > 1:
            broken += 1
        if any(got[p]["nlink"] != native[p]["nlink"] for p in g):
            nl += 1
    if broken:
        diffs.append(f"hard links not shared: {broken} of {len(groups)} groups have distinct inodes")
    if nl:
        diffs.append(f"link count wrong in {nl} of {len(groups)} hard-link groups")
    # xattrs both ways: the reference's on the mount, and none on the mount that the reference
    # lacks (the root, which the listing leaves out too, aside).
    xattrs_checked = False
    try:
        gx = xattrs(m, timeout)
        paths = sorted((set(nx) | set(gx)) - {""})
        miss = [p for p in paths if gx.get(p, {}) != nx.get(p, {})]
        if miss:
            p = miss[0]
            diffs.append(f"xattrs missing or different on {len(miss)} files (of {len(nx)} with xattrs in the "
                         f"tree; e.g. {p}: tree {sorted(nx.get(p, {}))}, {peer} {sorted(gx.get(p, {}))})")
        xattrs_checked = True
    except BenchError as e:
        unchecked.append(f"xattrs not compared: {e}")
    bad, compared = [], 0
    try:
        t_end = time.time() + 120
        for p in sample:
            if p not in got:
                continue
            if time.time() > t_end:
                unchecked.append(f"content sample cut short after 120 s ({compared} of {len(sample)} compared)")
                break
            a = (tree / p).read_bytes()
            try:
                b = (m / p).read_bytes()
            except OSError as e:
                b = f"error {e}"
            compared += 1
            if a != b:
                bad.append(p)
    except OSError as e:
        unchecked.append(f"content check stopped after {compared} files: {e}")
    if bad:
        diffs.append(f"content differs in {len(bad)} of {compared} sampled files (e.g. {bad[0]})")
    if diffs:
        return {"ok": False, "compared": True, "against": against, "notes": diffs + unchecked}
    same = (f"identical to {against}: {len(native)} entries (type, mode, owner, size, mtime, link target)"
            + (f", {len(groups)} hard-link groups" if groups else "")
            + ((f", xattrs on {len(nx)} files" if nx else ", xattrs (none in either)") if xattrs_checked else "")
            + f", contents of {compared} sampled files")
    return {"ok": True, "compared": True, "against": against, "notes": [same] + unchecked}


# ---------------------------------------------------------------------------------------------
# Report

def versions(checkout):
    def first(cmd):
        try:
            r = run(cmd, capture=True, check=False, timeout=60)
            return ((r.stdout or "") + (r.stderr or "")).strip().splitlines()[0]
        except (BenchError, IndexError, OSError):
            return "?"
    import importlib.metadata as md
    v = {
        "imgfs": common.imgfs_version(checkout, IMGFS),
        "docker": f"client {first(['docker', 'version', '--format', '{{.Client.Version}}'])}, "
                  f"daemon {first(['docker', 'version', '--format', '{{.Server.Version}}'])} "
                  f"({first(['docker', 'info', '--format', '{{.Driver}}'])})",
        "ratarmount": ", ".join(f"{p} {md.version(p)}" for p in ("ratarmount", "ratarmountcore", "mfusepy")),
        "archivemount": archivemount_version(),
        "squashfuse": "squashfuse " + first(["dpkg-query", "-W", "-f", "${Version}", "squashfuse"])
                      + "; " + first(["mksquashfs", "-version"]),
        "bwrap": first(["bwrap", "--version"]),
        "hyperfine": first(["hyperfine", "--version"]),
        "libfuse": first(["fusermount3", "-V"]),
        "GNU tar": first(["tar", "--version"]),
    }
    return v


def archivemount_version():
    r = run(["archivemount", "--version"], capture=True, check=False, timeout=60)
    lines = (r.stdout + r.stderr).splitlines()
    return "; ".join(l.strip() for l in lines if "archivemount" in l or "FUSE library" in l) or "?"


TITLES = {
    "kill-to-answer": "kill -9 → first answered lookup",
    "remount": "a new imgfs mount (index cached, page cache dropped)",
    "native": "native extracted tree", "imgfs": "imgfs (docker ref)", "imgfs-tar": "imgfs (tar path)",
    "ratarmount": "ratarmount", "archivemount": "archivemount", "squashfuse": "squashfuse",
    "imgfs-build": "imgfs mount, fresh cache", "ratarmount-build": "ratarmount first mount",
    "export": "docker export -o FILE (floor)", "unpack": "docker export \\| tar -x, then bwrap",
    "bwrap": "bwrap on the extracted tree", "docker": "docker run --rm",
    "imgfs-private": "imgfs run --linger 0 (a server per run)",
    "bwrap-fresh-imgfs": "bwrap over a fresh imgfs mount (floor of a run with its own server)",
}


def cell(st, key="median"):
    if st is None:
        return "not measured"
    if st.get("error"):
        e = st["error"].replace("|", "/")
        if e.startswith("skipped"):
            return e[:140]
        if st.get("timeout"):
            return e.split(": ", 1)[-1][:100]
        return "FAILED: " + e[:120]
    v = st.get(key)
    if v is None:
        return "—"
    sd = st.get("stddev")
    return f"{fmt_time(v)}" + (f" ± {fmt_time(sd)}" if sd else "") + f" ({st['runs']})"


def ratio_cell(a, b):
    """imgfs time a divided by peer time b."""
    if not a or not b or a.get("error") or b.get("error") or not a.get("median") or not b.get("median"):
        return "—"
    x = a["median"] / b["median"]
    return f"{x:.3g}" + (f" ({1 / x:.3g}× faster)" if x < 1 else "")


def time_table(R, images, cols, rows, imgfs_row):
    """cols: [(section, header)], rows: peers; one column pair (time, imgfs ÷ this) per image × section."""
    hdr = ["what"]
    for k in images:
        for _, h in cols:
            hdr += [f"{k} {h}".strip(), "imgfs ÷ this"]
    lines = ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    for peer in rows:
        row = [TITLES.get(peer, peer)]
        for k in images:
            for sec, _ in cols:
                st = R.get(k, {}).get(sec, {}).get(peer)
                row.append(cell(st))
                ref = R.get(k, {}).get(sec, {}).get(imgfs_row)
                row.append("—" if peer == imgfs_row else ratio_cell(ref, st))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def mib(b):
    return "—" if b is None else f"{b / 2**20:.1f} MiB"


def evaluate_targets(R, images):
    T = []

    def med(k, sec, peer):
        st = R.get(k, {}).get(sec, {}).get(peer) or {}
        return None if st.get("error") else st.get("median")

    def add(name, k, value, ok, detail):
        T.append({"target": name, "image": k, "value": value, "met": ok, "detail": detail})

    for k in images:
        for peer in ("imgfs", "imgfs-tar"):
            a = med(k, "mount_ready", peer)
            add(f"warm mount ready ≤ 10 ms ({TITLES[peer]})", k, fmt_time(a), None if a is None else a <= 0.010, "")
        a, b = med(k, "mount_ready", "imgfs"), med(k, "mount_ready", "ratarmount")
        add("warm mount ≥ 15× faster than ratarmount's warm remount", k,
            f"{b / a:.1f}×" if a and b else "—", None if not (a and b) else b / a >= 15,
            f"{fmt_time(a)} vs {fmt_time(b)}")
        for temp in ("cold", "warm"):
            a, b = med(k, f"walk_{temp}", "imgfs"), med(k, f"walk_{temp}", "native")
            add(f"metadata walk ≤ 2× native ({temp})", k, f"{a / b:.2f}×" if a and b else "—",
                None if not (a and b) else a / b <= 2, f"{fmt_time(a)} vs {fmt_time(b)}")
        for temp in ("cold", "warm"):
            a, b = med(k, f"readall_{temp}", "imgfs"), med(k, f"readall_{temp}", "native")
            add(f"read every file ≤ 1.5× native ({temp})", k, f"{a / b:.2f}×" if a and b else "—",
                None if not (a and b) else a / b <= 1.5, f"{fmt_time(a)} vs {fmt_time(b)}")
        a, b, c = med(k, "warm_run", "imgfs"), med(k, "warm_run", "bwrap"), med(k, "warm_run", "docker")
        add("warm imgfs run ≤ 1.5× bwrap", k, f"{a / b:.2f}×" if a and b else "—",
            None if not (a and b) else a / b <= 1.5, f"{fmt_time(a)} vs {fmt_time(b)}")
        m, f = med(k, "warm_run", "imgfs-private"), med(k, "warm_run", "bwrap-fresh-imgfs")
        floor = (f"; floor, bwrap alone over a fresh imgfs mount: {fmt_time(f)} = {f / b:.2f}× bwrap"
                 if f and b else "")
        add("(not a target) imgfs run --linger 0, a server per run, vs bwrap", k,
            f"{m / b:.2f}×" if m and b else "—", None, f"{fmt_time(m)} vs {fmt_time(b)}{floor}")
        add("warm imgfs run ≥ 10× faster than docker run --rm", k, f"{c / a:.1f}×" if a and c else "—",
            None if not (a and c) else c / a >= 10, f"{fmt_time(a)} vs {fmt_time(c)}")
        a, b, c = med(k, "cold_start", "imgfs"), med(k, "cold_start", "export"), med(k, "cold_start", "unpack")
        add("cold start ≤ 1.1× docker export to a file alone", k, f"{a / b:.2f}×" if a and b else "—",
            None if not (a and b) else a / b <= 1.1, f"{fmt_time(a)} vs {fmt_time(b)}")
        over = lambda t: f"+{fmt_time(t)}" if t >= 0 else f"−{fmt_time(-t)} (within the export's spread)"
        floor = (f"; floor, the export alone: {fmt_time(b)} = {b / c:.2f}× export + tar -x; time over "
                 f"the export: imgfs {over(a - b)}, tar -x + bwrap {over(c - b)}"
                 if a and b and c else "")
        add("cold start clearly faster than export + tar -x (≤ 0.8×)", k, f"{a / c:.2f}×" if a and c else "—",
            None if not (a and c) else a / c <= 0.8, f"{fmt_time(a)} vs {fmt_time(c)}{floor}")
        s = R.get(k, {}).get("sizes", {})
        a, b = s.get("imgfs_index"), s.get("ratarmount_index")
        add("index ≤ half of ratarmount's index", k, f"{a / b:.2f}×" if a and b else "—",
            None if not (a and b) else a / b <= 0.5, f"{a} B vs {b} B" if a and b else "")
        t = med(k, "index_build", "imgfs-build")
        size = R.get(k, {}).get("info", {}).get("tar_bytes")
        add("index build ≥ 1 GB/s (tar on disk, warm page cache)", k,
            f"{size / t / 1e9:.2f} GB/s" if t and size else "—", None if not (t and size) else size / t >= 1e9,
            f"{size / 1e6:.0f} MB in {fmt_time(t)}" if t and size else "")
        a, b = med(k, "recovery", "kill-to-answer"), med(k, "recovery", "remount")
        if a is not None or b is not None:
            add("recovery: kill -9 of the server to the first answered read ≤ 100 ms (median of 20)", k,
                fmt_time(a), None if a is None else a <= 0.100,
                f"a new mount of the same image instead: {fmt_time(b)}" if b else "")
    # The targets are on the server's anonymous memory (heap, stacks: `Anonymous` in
    # smaps_rollup), what they are named after. Its other private pages are the mapped index
    # file: page cache, read from disk on demand and dropped under memory pressure, as large as
    # the index itself; its private total (Private_Clean + Private_Dirty) is shown beside.
    mem = lambda k: R.get(k, {}).get("memory", {}).get("imgfs") or {}
    mp, ms = mem("python").get("anon"), mem("synthetic").get("anon")

    def beside(k):
        m = mem(k)
        parts = []
        if m.get("anon") is not None and m.get("private"):
            parts.append(f"{k}: private {mib(m['private'])} = anonymous + {mib(m['private'] - m['anon'])} "
                         "of mapped files (the index, the program)")
        if len(m.get("pids") or []) > 1:
            parts.append(f"summed over {len(m['pids'])} server processes")
        # The figure is "after a walk and a read-all": say when that use was not complete.
        parts += [n for n in m.get("note") or [] if n.startswith(("read-all skipped", "failed", "tar said"))]
        return "; ".join(parts)
    if "python" in images:
        add("server anonymous memory (heap, stacks) ≤ 16 MiB after a walk and a read-all (python image)", "python",
            mib(mp), None if mp is None else mp <= 16 * 2**20, beside("python"))
    if "synthetic" in images:
        add("server anonymous memory not growing with image size (synthetic ≤ 1.25× python)",
            "synthetic", mib(ms), None if not (mp and ms) else ms <= 1.25 * mp,
            f"python {mib(mp)}; {beside('synthetic')}")
    return T


def render(R, meta, images, path):
    L = []
    A = L.append
    A("# imgfs benchmark results\n")
    A(f"Generated by `bench/run.sh{' --quick' if meta['quick'] else ''}` on {meta['date']} "
      f"(run took {meta['duration_min']:.0f} min). Do not edit by hand: run the suite again.\n")
    checkout = common.checkout_of(meta)
    A(f"Built and measured from {common.checkout_text(checkout)}, on {common.machine_text(meta['machine'])}.\n")
    others = [(k, R[k]["info"]["checkout"]) for k in images if (R[k].get("info") or {}).get("checkout")
              and common.checkout_label(R[k]["info"]["checkout"]) != common.checkout_label(checkout)]
    if others:
        A("**Mixed checkouts**: " + "; ".join(f"the {k} image's figures come from {common.checkout_text(c)}"
                                              for k, c in others) + ".\n")
    if meta.get("resumed"):
        kept = [e.split(" ")[0] for e in meta["resumed"]]
        here = common.machine_text(meta["machine"])
        machines = [(R.get(k, {}).get("info") or {}).get("machine") for k in kept]
        if all(m and common.machine_text(m) == here for m in machines):
            where = "on the same machine"
        else:
            where = "**on another machine, or one not recorded**: " + "; ".join(
                f"{k}: {common.machine_text(m) if m else 'not recorded'}" for k, m in zip(kept, machines))
        A("Resumed run: the figures for " + ", ".join(meta["resumed"]) + " come from earlier "
          f"invocations {where}, each stopped after finishing them"
          + (f"; the server memory figures (section 6) were measured again on {meta['memory_remeasured']}"
             if meta.get("memory_remeasured") else "") + ".\n")
    if meta.get("partial"):
        A("**Partial results**: written after the images listed below; the run went on with the others.\n")
    runs = common.runs_section("-quick" if meta["quick"] else "")
    if runs:
        A(f"<!-- {common.RUNS_SECTION}:start -->\n{runs}\n<!-- {common.RUNS_SECTION}:end -->\n")
    A("Times are medians over the number of runs in parentheses (± standard deviation), measured with "
      "hyperfine unless said otherwise. **imgfs ÷ this** is the imgfs figure of the same table and "
      "image divided by that row's figure, from the same run: below 1 imgfs is faster. *Cold* means "
      "page cache dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) and, for the FUSE file systems, "
      "a fresh mount before each run; *warm* means a mount already used once.\n")
    A("## Machine and versions\n")
    A("| | |\n|---|---|")
    for k, v in meta["machine"].items():
        A(f"| {k} | {v} |")
    for k, v in meta["versions"].items():
        A(f"| {k} | {v} |")
    A("")
    A("| image | entries | tar size | docker ref |\n|---|---|---|---|")
    for k in images:
        i = R[k]["info"]
        A(f"| {k} | {i['entries']} | {i['tar_bytes'] / 1e6:.0f} MB | `{i['ref']}` |")
    A("")
    if meta.get("busy"):
        A(f"Note: the machine was still busy before {len(meta['busy'])} measurement(s): "
          + ", ".join(meta["busy"][:10]) + ".\n")

    A("## Targets\n")
    A("| target | image | imgfs | met? | detail |\n|---|---|---|---|---|")
    for t in meta["targets"]:
        if t["target"].startswith("(not a target)"):
            met = "—"
        elif t["met"] is None:
            met = "not measured"
        else:
            met = "**met**" if t["met"] else "**missed**"
        A(f"| {t['target']} | {t['image']} | {t['value']} | {met} | {t['detail']} |")
    A("")

    A("## 1. Cold start: image only in dockerd → `python3 -c pass` done\n")
    A("`imgfs run --network none --cache-dir EMPTY IMAGE -- python3 -c pass` against unpacking "
      "(`docker create` + `docker export | tar -x -C DIR` + `docker rm` + `bwrap --bind DIR / ... "
      "python3 -c pass`) and against `docker export -o FILE` of an already created container alone "
      "(the floor: any cold start must read the whole image out of dockerd once). Page cache dropped "
      "before each run.\n")
    A(time_table(R, images, [("cold_start", "")], ["imgfs", "export", "unpack"], "imgfs"))
    A("")
    A("## 2. Warm mount ready (cache or index already there)\n")
    A("Time for the mount command to return with the mount point usable: `imgfs mount` (returns once "
      "the mount answers), `ratarmount ARCHIVE MNT` with its index present (daemon mode: returns once "
      "mounted), `archivemount -o readonly ARCHIVE MNT` (no persistent index: reads every header "
      "each time), `squashfuse IMG.sqfs MNT`. Unmount between runs.\n")
    A(time_table(R, images, [("mount_ready", "")], ["imgfs", "imgfs-tar", "ratarmount", "archivemount",
                                                     "squashfuse"], "imgfs"))
    A("")
    A("mksquashfs (uncompressed: `-noI -noD -noF -noX`, so that reads compare formats, not "
      "decompression) from the extracted tree, one timed run: "
      + ", ".join(f"{k} {fmt_time(R[k]['info'].get('mksquashfs_s'))}" for k in images) + ".\n")
    A("## 3. Warm run: `python3 -c pass` in a sandbox\n")
    A("`imgfs run --network none IMAGE -- python3 -c pass` (cache filled) against `docker run --rm IMAGE python3 -c "
      "pass` and `bwrap --ro-bind EXTRACTED / --tmpfs /tmp --proc /proc --dev /dev --unshare-pid "
      "--unshare-ipc --unshare-uts --unshare-net python3 -c pass`: no network, as bwrap's (the Sandbox "
      "start-up section measures what the default bridge network adds). `imgfs` is the command as "
      "users run it otherwise: the first run of an image (the warm-up) leaves a shared server that serves "
      "the later runs, with warm kernel caches, until it has been unused for `--linger` (5 min). "
      "`imgfs-private` is `imgfs run --linger 0` with no live mount: every run serves the image "
      "with its own FUSE server, from cold kernel caches. `bwrap-fresh-imgfs` is bwrap's own "
      "start over an imgfs mount made just before each run: no imgfs run work at all, only a "
      "new mount's empty kernel caches (every lookup and every page python touches is one FUSE "
      "request), which is the floor for a run with a server of its own.\n")
    A(time_table(R, images, [("warm_run", "")], ["imgfs", "imgfs-private", "bwrap", "bwrap-fresh-imgfs",
                                                 "docker"], "imgfs"))
    A("")
    A("## 4. Metadata walk: `find MNT -printf '%s %m %u\\n' >/dev/null`\n")
    A(time_table(R, images, [("walk_cold", "cold"), ("walk_warm", "warm")], FS_PEERS, "imgfs"))
    A("")
    A("## 5. Read every file: `tar -C MNT -cf - . | cat >/dev/null`\n")
    A(time_table(R, images, [("readall_cold", "cold"), ("readall_warm", "warm")], FS_PEERS, "imgfs"))
    A("")
    if "synthetic" in images:
        A(f"### Random 4 KiB reads in the 2 GiB file (synthetic image)\n")
        A(f"{RANDREAD_COUNT} `pread`s of 4 KiB at random aligned offsets (same offsets everywhere, "
          f"bench/randread.py), page cache dropped and file system remounted before each run; median "
          f"time per read (a run stops after its time limit).\n")
        A("| what | per read | runs | imgfs ÷ this |\n|---|---|---|---|")
        sec = R["synthetic"].get("randread", {})
        a = (sec.get("imgfs") or {}).get("median_per_read")
        for peer in FS_PEERS:
            st = sec.get(peer) or {}
            if st.get("error"):
                A(f"| {TITLES[peer]} | {cell(st)} | | |")
                continue
            v = st.get("median_per_read")
            extra = "" if st.get("complete", True) else \
                f" (only {st['raw'][-1]['reads']} reads in {st['raw'][-1]['seconds']:.0f} s)"
            rt = "—" if peer == "imgfs" or not (a and v) else f"{a / v:.3g}" + (f" ({v / a:.3g}× faster)" if a < v else "")
            A(f"| {TITLES[peer]} | {v * 1e6:.0f} µs{extra} | {st.get('runs')} | {rt} |")
        A("")
    A("## 6. Server memory, index size, disk use\n")
    A("Memory of the file-system server process after a walk and a read-all on a fresh mount: "
      "anonymous = the process's own memory (heap, stacks; `Anonymous` in /proc/PID/smaps_rollup); "
      "private = Private_Clean + Private_Dirty, which adds the file pages mapped by this process "
      "alone (for imgfs the index file and its own program: page cache, reclaimable); VmRSS and "
      "VmHWM (the process's peak resident set since it started) from /proc/PID/status. The server "
      "is the process serving the mount (its command line ends with the mount point); imgfs's "
      "figures add its keeper's, the small process that holds the mount's connection"
      + ("" if any(len((R[k].get("memory", {}).get(p) or {}).get("pids") or []) > 1
                   for k in images for p in FS_PEERS[1:]) else ", one per mount in this run")
      + "; the memory targets above are on its anonymous memory.\n")
    hdr = ["server"] + [f"{k} {c}" for k in images for c in ("anonymous", "private", "VmRSS", "VmHWM")]
    A("| " + " | ".join(hdr) + " |\n|" + "---|" * len(hdr))
    for peer in FS_PEERS[1:]:
        row = [TITLES[peer]]
        for k in images:
            st = R[k].get("memory", {}).get(peer) or {}
            if st.get("error"):
                row += [cell(st), "", "", ""]
            else:
                row += [mib(st.get("anon")), mib(st.get("private")), mib(st.get("rss")), mib(st.get("hwm"))]
        A("| " + " | ".join(row) + " |")
    A("")
    notes = [f"{k} {TITLES[p]}: {'; '.join(n)}" for k in images for p in FS_PEERS[1:]
             for n in [(R[k].get("memory", {}).get(p) or {}).get("note") or []] if n]
    if notes:
        A("Read-all during the memory run: " + " · ".join(notes) + "\n")
    A("| index | " + " | ".join(f"{k} size | {k} per entry" for k in images) + " |\n|" + "---|" * (1 + 2 * len(images)))
    for key, title in (("imgfs_index", "imgfs `index`"), ("ratarmount_index", "ratarmount `.index.sqlite`")):
        row = [title]
        for k in images:
            v = R[k].get("sizes", {}).get(key)
            n = R[k]["info"]["entries"]
            row += [mib(v), "—" if v is None else f"{v / n:.1f} B"]
        A("| " + " | ".join(row) + " |")
    A("")
    A("| disk used (du) | " + " | ".join(images) + " |\n|" + "---|" * (1 + len(images)))
    rows = list((R[images[0]].get("sizes", {}).get("disk") or {}).keys())
    for rk in rows:
        A(f"| {rk} | " + " | ".join(mib((R[k].get('sizes', {}).get('disk') or {}).get(rk)) for k in images) + " |")
    A("")
    A("## 7. Index build from a tar on disk (warm page cache)\n")
    A("`imgfs mount --cache-dir FRESH TAR MNT` against ratarmount's first mount of the same tar "
      "(index written to a fresh `--index-file`); the tar is read into the page cache before each run.\n")
    A(time_table(R, images, [("index_build", "")], ["imgfs-build", "ratarmount-build"], "imgfs-build"))
    A("")
    A("| rate (tar bytes / median time) | " + " | ".join(images) + " |\n|" + "---|" * (1 + len(images)))
    for peer in ("imgfs-build", "ratarmount-build"):
        row = []
        for k in images:
            st = R[k].get("index_build", {}).get(peer) or {}
            row.append("—" if not st.get("median") else f"{R[k]['info']['tar_bytes'] / st['median'] / 1e6:.0f} MB/s")
        A(f"| {TITLES[peer]} | " + " | ".join(row) + " |")
    A("")
    if any(R[k].get("recovery") for k in images):
        A("## 8. Recovery: a server killed under its mount\n")
        A("`kill -9` of the server of a live `imgfs mount` of the tar, twenty times: from the kill to "
          "the first lookup the next server answers (its keeper starts it on the same connection; a "
          "name never looked up before, so that the kernel cannot answer from its caches; asked once "
          "the killed process is gone). Beside it, what a new mount of the image takes (`imgfs mount`, "
          "index cached, page cache dropped): what recovering would take without a keeper, after "
          "clearing the dead mount.\n")
        A(time_table(R, [k for k in images if R[k].get("recovery")], [("recovery", "")],
                     ["kill-to-answer", "remount"], "kill-to-answer"))
        A("")
    A("## Correctness of each view against the extracted tree\n")
    A("Each mount listed with `find -printf '%P %y %m %U %G %s %T@ %l'` (directory sizes not compared) "
      "and compared entry by entry with the tar -x tree; hard-link groups (same inode, right link "
      "count), xattrs (`getfattr -R -d -m-`, both ways), and the bytes of about 200 sampled regular files. "
      "The docker-ref mount is compared with tar -x of an export docker makes during the check "
      "(`docker create` of the image, `docker export` of that container), not with the tar. "
      "OK: compared, no difference; DIFFERS: the differences found; NOT COMPARED: the comparison was "
      "not made, and why.\n")
    for k in images:
        c = R[k].get("correctness")
        if not c:
            A(f"**{k}**: NOT COMPARED in this run (`--no-correctness`).\n")
            continue
        nat = c["native"]
        A(f"**{k}** ({nat['entries']} entries, {nat['hardlink_groups']} hard-link groups, "
          f"xattrs on {nat['xattr_files']} files):\n")
        for peer in ("imgfs", "imgfs-tar", "ratarmount", "archivemount", "squashfuse"):
            st = c.get(peer)
            if st:
                verdict, notes = correctness_verdict(peer, st)
                A(f"- {TITLES[peer]}: {verdict} — " + "; ".join(notes))
        A("")
    errs = [f"{k}, set-up of {p}: {e}" for k in images for p, e in (R[k].get("setup_errors") or {}).items()]
    for k in images:
        for sec, d in R[k].items():
            if sec in ("info", "sizes", "correctness", "setup_errors", "hung") or not isinstance(d, dict):
                continue
            for p, st in d.items():
                if isinstance(st, dict) and st.get("error") and not st.get("skipped") \
                        and not st["error"].startswith("skipped"):
                    errs.append(f"{k}, {sec}, {TITLES.get(p, p)}: {st['error']}")
    for k in images:
        for p, why in (R[k].get("hung") or {}).items():
            errs.append(f"{k}: {TITLES.get(p, p)} stopped answering ({why}); its later measurements "
                        f"were skipped")
    if errs:
        A("## Peer failures\n")
        for e in errs:
            A(f"- {e}")
        A("")
    A("## How to reproduce\n")
    A("```\nbench/run.sh            # full run: both images\nbench/run.sh --quick    # python image only, fewer runs\n```\n")
    A("Raw hyperfine JSON and the summary are written under `bench/results/`.\n")
    path.write_text(common.keep_sections(path, "\n".join(L)))


def correctness_verdict(peer, st):
    """(OK | DIFFERS | NOT COMPARED, notes) of a correctness row. A row whose comparison was not
    made is never OK; rows saved before "compared" was recorded are read from their first note."""
    notes = st["notes"]
    compared = st.get("compared")
    if compared is None:  # a result saved by an earlier version of this script
        compared = not notes[0].startswith(("skipped", "set-up failed", "not compared", "could not"))
        if peer == "imgfs" and notes[0].startswith("identical to docker's export, tar -x"):
            # It was compared with tar -x of the archive imgfs had itself exported into its
            # cache: the archive it serves, so identical by construction.
            return "NOT COMPARED", ["compared only with tar -x of the archive imgfs exported into its own "
                                    "cache (the archive it serves), not with an export docker made in the run"]
    if not compared:
        return "NOT COMPARED", notes
    return ("OK" if st["ok"] else "DIFFERS"), notes


COLORS = {"native": "#7f7f7f", "imgfs": "#1f77b4", "imgfs-tar": "#9ecae1", "ratarmount": "#ff7f0e",
          "archivemount": "#d62728", "squashfuse": "#2ca02c", "bwrap": "#9467bd", "docker": "#8c564b",
          "export": "#bcbd22", "unpack": "#e377c2", "imgfs-build": "#1f77b4", "ratarmount-build": "#ff7f0e",
          "imgfs-private": "#6baed6"}


def chart(R, images, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = [("cold start", "cold_start", ["imgfs", "export", "unpack"]),
              ("warm mount", "mount_ready", ["imgfs", "ratarmount", "archivemount", "squashfuse"]),
              ("warm run", "warm_run", ["imgfs", "imgfs-private", "bwrap", "docker"]),
              ("walk cold", "walk_cold", FS_PEERS), ("walk warm", "walk_warm", FS_PEERS),
              ("read-all cold", "readall_cold", FS_PEERS), ("read-all warm", "readall_warm", FS_PEERS),
              ("index build", "index_build", ["imgfs-build", "ratarmount-build"])]
    fig, axes = plt.subplots(len(images), 1, figsize=(15, 5.2 * len(images)), squeeze=False)
    seen = {}
    for ax, k in zip(axes[:, 0], images):
        x = 0.0
        ticks, labels = [], []
        for title, sec, peers in groups:
            start = x
            for peer in peers:
                st = R.get(k, {}).get(sec, {}).get(peer)
                if st is None:
                    continue
                color = COLORS.get(peer, "#333333")
                name = {"imgfs-build": "imgfs", "ratarmount-build": "ratarmount"}.get(peer, peer)
                if st.get("median"):
                    b = ax.bar(x, st["median"] * 1e3, width=0.8, color=color)
                    v = st["median"]
                    ax.text(x, st["median"] * 1e3 * 1.08, fmt_time(v).replace(" ", ""), ha="center",
                            va="bottom", fontsize=6.5, rotation=90)
                    label = TITLES.get(name, name) if name not in ("export", "unpack") else TITLES[peer]
                    seen.setdefault(label.replace("\\|", "|"), b)
                else:
                    ax.text(x, 1, "timeout" if st.get("timeout") else
                            ("skipped" if st.get("error", "").startswith("skipped") else "failed"), ha="center", va="bottom",
                            fontsize=7, rotation=90, color=color)
                x += 1
            ticks.append((start + x - 1) / 2)
            labels.append(title)
            x += 1.2
        ax.set_yscale("log")
        ax.set_ylabel("median time (ms, log scale)")
        ax.set_xticks(ticks, labels)
        info = R[k]["info"]
        ax.set_title(f"{k} image: {info['entries']} entries, {info['tar_bytes'] / 1e6:.0f} MB tar")
        ax.grid(axis="y", which="major", alpha=0.3)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 6)
    fig.legend(list(seen.values()), list(seen.keys()), loc="lower center", ncol=min(6, len(seen)), fontsize=9)
    fig.suptitle("imgfs vs peers — lower is better (bench/run.sh)")
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------

def main():
    if len(sys.argv) > 1 and sys.argv[1] == "_prep":
        try:
            prep(sys.argv[2:])
        except BenchError as e:
            sys.exit(f"bench.py _prep: {e}")
        return

    ap = argparse.ArgumentParser(description="imgfs benchmark suite (run it through bench/run.sh)")
    ap.add_argument("--quick", action="store_true", help="fewer runs, python image only")
    ap.add_argument("--images", help="comma-separated: python,synthetic (default: both; --quick: python)")
    ap.add_argument("--no-correctness", action="store_true", help="skip the correctness checks")
    ap.add_argument("--prepare-only", action="store_true", help="build the images and trees, measure nothing")
    ap.add_argument("--render-only", action="store_true",
                    help="write RESULTS.md and chart.png again from bench/results/results.json")
    ap.add_argument("--remeasure-memory", action="store_true",
                    help="with --resume: measure the servers' memory again for the images kept, then report")
    ap.add_argument("--resume", action="store_true",
                    help="keep the images a previous, interrupted run finished (from bench/results/results.json)")
    args = ap.parse_args()
    images = args.images.split(",") if args.images else (["python"] if args.quick else ["python", "synthetic"])
    for k in images:
        if k not in ("python", "synthetic"):
            ap.error(f"unknown image {k}")
    if os.geteuid() != 0:
        sys.exit("bench.py: must run as root")
    for tool in ("hyperfine", "bwrap", "archivemount", "squashfuse", "mksquashfs", "docker", "getfattr"):
        if not shutil.which(tool):
            sys.exit(f"bench.py: {tool} not found (bench/run.sh installs it)")
    if not IMGFS.exists() or not RATARMOUNT.exists():
        sys.exit(f"bench.py: {IMGFS} or {RATARMOUNT} missing (bench/run.sh builds and installs them)")

    if args.render_only:
        saved = json.loads((RESULTS / f"results{'-quick' if args.quick else ''}.json").read_text())
        meta, R = saved["meta"], saved["results"]
        meta.setdefault("versions", {})["archivemount"] = archivemount_version()
        done = [k for k in ("python", "synthetic") if k in R]
        md = (RESULTS / "RESULTS-quick.md") if args.quick else (BENCH / "RESULTS.md")
        png = (RESULTS / "chart-quick.png") if args.quick else (BENCH / "chart.png")
        meta["targets"] = evaluate_targets(R, done)
        render(R, meta, done, md)
        chart(R, done, png)
        print(f"bench.py: wrote {md} and {png}")
        return
    lock = common.hold_machine("bench.py")  # noqa: F841 (held until exit)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    common.set_log_file(open(RESULTS / f"bench{suffix}.log", "w"))
    raw = RESULTS / ("raw-quick" if args.quick else "raw")
    if raw.exists():
        shutil.rmtree(raw)

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    start = time.time()
    R, measured = {}, []
    meta = {"quick": args.quick, "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M %Z").strip(),
            "run": common.run_id(), "checkout": common.checkout_at_start()}
    try:
        WORK.mkdir(parents=True, exist_ok=True)
        cleanup_all()
        need = sum(DISK_NEEDED_GB[k] for k in images)
        if "synthetic" in images and (WORK / "synthetic" / "done").exists():
            need -= 8  # tree, tar and docker copy already there
        free = shutil.disk_usage(WORK).free / 1e9
        if free < need:
            sys.exit(f"bench.py: {free:.0f} GB free under {WORK}, the run needs about {need} GB "
                     f"(synthetic image: tree, tar, docker copy, squashfs, imgfs cache, cold-start copies, "
                     f"then docker's export extracted for the correctness check)")
        log(f"{free:.0f} GB free under {WORK}; images: {', '.join(images)}")
        py = Image("python")
        py.dir.mkdir(parents=True, exist_ok=True)
        ensure_python(py)
        imgs = []
        for k in images:
            img = py if k == "python" else Image(k)
            if k == "synthetic":
                ensure_synthetic(img, py.tree)
            img.entries = count_entries(img)
            img.tar_size = img.tar.stat().st_size
            imgs.append(img)
        if args.prepare_only:
            log("inputs ready: " + ", ".join(f"{i.key} ({i.entries} entries)" for i in imgs))
            return
        meta["machine"] = machine()
        meta["versions"] = versions(meta["checkout"])
        runner = Runner(args.quick, raw)
        prev = RESULTS / f"results{suffix}.json"
        if args.resume and prev.exists():
            old = json.loads(prev.read_text())
            # An image the earlier invocation had itself kept keeps its original date.
            earlier = {e.split(" ")[0]: e for e in old["meta"].get("resumed", [])}
            for k in images:
                rk = old["results"].get(k)
                if rk and "sizes" in rk and (args.no_correctness or "correctness" in rk):
                    R[k] = rk
                    info = rk.setdefault("info", {})
                    info.setdefault("checkout", common.checkout_of(old["meta"]))
                    info.setdefault("machine", old["meta"].get("machine"))
                    meta.setdefault("resumed", []).append(earlier.get(
                        k, f"{k} (measured {old['meta'].get('date')} at {common.checkout_label(info['checkout'])})"))
            if args.remeasure_memory:
                meta["memory_remeasured"] = meta["date"]
        for img in imgs:
            if img.key in R and args.remeasure_memory:
                log(f"=== {img.key} image: measuring the servers' memory again")
                sec = R[img.key]["memory"] = {}
                for peer in FS_PEERS[1:]:
                    if peer in R[img.key].get("hung", {}) or peer in R[img.key].get("setup_errors", {}):
                        sec[peer] = skipped(R[img.key], peer)
                        continue
                    sec[peer] = memory_after_use(img, peer, R[img.key], 900)
                    umount(img, peer)
                continue
            if img.key in R:
                log(f"=== {img.key} image: kept from the interrupted run")
                continue
            log(f"=== {img.key} image: {img.entries} entries, {img.tar_size / 1e6:.0f} MB tar")
            bench_image(img, R, runner, not args.no_correctness)
            R[img.key]["info"].update(checkout=meta["checkout"], machine=meta["machine"])
            measured.append(img.key)
            done = [i.key for i in imgs if i.key in R]
            if len(done) < len(imgs):
                try:  # results so far, in case the rest of the run is cut short
                    report(R, meta, done, start, args.quick, partial=True)
                except Exception as e:  # noqa: BLE001 - the run goes on
                    log(f"WARNING: partial report failed: {e}")
    except KeyboardInterrupt:
        log("interrupted; unmounting")
        cleanup_all()
        sys.exit(130)
    except BenchError as e:
        log(f"ERROR: {e}")
        cleanup_all()
        sys.exit(1)
    finally:
        cleanup_all()
    meta["checkout"] = common.checkout_at_end(meta["checkout"])
    for k in measured:  # a change of the tree during the run marks their figures too
        R[k]["info"]["checkout"] = meta["checkout"]
    report(R, meta, images, start, args.quick, partial=False)


def report(R, meta, images, start, quick, partial):
    """Write the summary JSON, RESULTS.md and chart.png for the images measured so far."""
    suffix = "-quick" if quick else ""
    meta["duration_min"] = (time.time() - start) / 60
    meta["partial"] = partial
    meta["targets"] = evaluate_targets(R, images)
    meta["busy"] = []
    for k in images:
        for name, sec in R[k].items():
            if isinstance(sec, dict):
                for peer, st in sec.items():
                    if isinstance(st, dict) and st.get("idle_before", 1) < IDLE_THRESHOLD:
                        meta["busy"].append(f"{k} {name} {peer}")
    (RESULTS / f"results{suffix}.json").write_text(json.dumps({"meta": meta, "results": R}, indent=1, default=str))
    md = (RESULTS / "RESULTS-quick.md") if quick else (BENCH / "RESULTS.md")
    png = (RESULTS / "chart-quick.png") if quick else (BENCH / "chart.png")
    render(R, meta, images, md)
    chart(R, images, png)
    log(f"wrote {md} and {png} after {meta['duration_min']:.1f} min" + (" (partial)" if partial else ""))
    if partial:
        return
    for t in meta["targets"]:
        log(f"target {'MET   ' if t['met'] else 'MISSED' if t['met'] is False else 'n/a   '} "
            f"{t['image']}: {t['target']}: {t['value']}")

if __name__ == "__main__":
    main()
