"""The floor of a lazy cold start, computed without imgfs: what any lazy reader of an image must
fetch for a program's start, and how long that takes at the link's rate.

For a workload (a command run in the image's extracted tree under strace, in bwrap):

  files    every regular file the command opens or executes, with the dynamic loader of each
           executable (the kernel opens it, strace does not show it), symlinks resolved
           inside the tree;
  layers   where each file's data lies in the image: the last layer that holds it (whiteouts
           and opaque directories applied), its data's offset and size in the layer's tar
           (hard links: their target's), read with Python's tarfile from the decompressed
           layer;
  ranges   the compressed bytes that hold that data, from the layer itself: the deflate blocks
           (gzip; an eStargz layer is gzip members, whose ends are block ends) or zstd frames
           (zstd:chunked) that cover it, their bounds found by zlib's inflate stopping at each
           block (Z_BLOCK) and by libzstd's frame sizes; a block shared by two files counts
           once;
  index    the manifest and the config, and what a mount needs to know the tree: imgfs's index
           artifact (its size as `imgfs index push` reports it), an eStargz layer's TOC (from
           the gzip member holding stargz.index.json to the end), a zstd:chunked layer's TOC
           (the length its manifest-position annotation gives).

The floor's bytes are the ranges' plus the index's; its time is those bytes at the link's rate
plus one round trip. A deflate block in the middle of a layer also needs the 32 KiB of data
before it to be decompressed, which no floor here counts: the floor is a bound below any
reader, not a plan of one.

Used by bench/lazy.py; `floor.py LAYOUT REF TREE -- CMD...` prints one floor as JSON.
"""

import bisect
import ctypes
import ctypes.util
import gzip
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SKIP = ("/proc/", "/dev/", "/sys/", "/tmp/", "/run/")
ZSTD_MAGIC = 0xFD2FB528
CHUNKED_POSITION = "io.github.containers.zstd-chunked.manifest-position"
CHUNKED_POSITION_OLD = "io.containers.zstd-chunked.manifest-position"
ESTARGZ_TOC = "stargz.index.json"


# ---------------------------------------------------------------------------------------------
# What the program opens

def opened_files(tree, cmd, timeout=120):
    """Paths (inside the tree, symlinks resolved, regular files only) that `cmd` opens or
    executes when run in `tree` with bwrap, in the order first opened."""
    tree = Path(tree)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "strace"
        argv = ["strace", "-f", "-qq", "-s", "4096", "-e", "trace=open,openat,openat2,execve,execveat",
                "-o", str(log), "bwrap", "--ro-bind", str(tree), "/", "--proc", "/proc", "--dev", "/dev",
                "--tmpfs", "/tmp", "--unshare-all", "--", *cmd]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} under strace and bwrap exited {p.returncode}: "
                               f"{p.stderr.strip()[-300:]}")
        lines = log.read_text(errors="replace").splitlines()
    seen, out, started = set(), [], 0
    call = re.compile(r'^\d+\s+(open|openat|openat2|execve|execveat)\((?:[^,]*, )?"((?:[^"\\]|\\.)*)"(.*)\)\s+=\s+(-?\d+)')
    for line in lines:
        m = call.match(line)
        if not m:
            continue
        name, path, rest, ret = m.group(1), m.group(2), m.group(3), int(m.group(4))
        if ret < 0:
            continue
        if name.startswith("execve"):
            started += 1  # the first is bwrap's own, on the host
        # Until bwrap has executed the command, paths are the host's.
        if started < 2 or "O_DIRECTORY" in rest or path.startswith(SKIP):
            continue
        paths = [path]
        if name.startswith("execve"):
            interp = elf_interpreter(tree, path)
            if interp:
                paths.append(interp)
        for p in paths:
            real = resolve(tree, p)
            if real and real not in seen and stat.S_ISREG(os.lstat(tree / real).st_mode):
                seen.add(real)
                out.append(real)
    if not out:
        raise RuntimeError(f"{' '.join(cmd)}: strace saw no file opened in {tree}")
    return out


def resolve(tree, path, depth=0):
    """`path` inside `tree` with every symlink resolved as inside it; relative, no leading
    slash; None if it does not exist."""
    parts = [p for p in path.split("/") if p and p != "."]
    done = []
    while parts:
        p = parts.pop(0)
        if p == "..":
            if done:
                done.pop()
            continue
        cur = tree.joinpath(*done, p)
        try:
            st = os.lstat(cur)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            if depth > 40:
                return None
            target = os.readlink(cur)
            rest = "/".join(parts)
            base = "" if target.startswith("/") else "/".join(done)
            return resolve(tree, f"{base}/{target}/{rest}", depth + 1)
        done.append(p)
    return "/".join(done)


def elf_interpreter(tree, path):
    """The PT_INTERP of an ELF executable in the tree, or None."""
    real = resolve(tree, path)
    if not real:
        return None
    with open(tree / real, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
            return None
        phoff = int.from_bytes(head[32:40], "little")
        phentsize = int.from_bytes(head[54:56], "little")
        phnum = int.from_bytes(head[56:58], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
        for i in range(phnum):
            ph = table[i * phentsize:(i + 1) * phentsize]
            if int.from_bytes(ph[0:4], "little") == 3:  # PT_INTERP
                off, size = int.from_bytes(ph[8:16], "little"), int.from_bytes(ph[32:40], "little")
                f.seek(off)
                return f.read(size).rstrip(b"\0").decode()
    return None


# ---------------------------------------------------------------------------------------------
# Where the files' data lies

def layer_stream(blob, media_type):
    """The layer's tar stream and what to close after."""
    if "zstd" in media_type:
        p = subprocess.Popen(["zstd", "-dcq", str(blob)], stdout=subprocess.PIPE)
        return p.stdout, p
    if "gzip" in media_type:
        return gzip.open(blob, "rb"), None
    return open(blob, "rb"), None


def norm(name):
    name = name.lstrip("/")
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def layer_entries(blob, media_type):
    """A layer's own entries: {files: {path: [data offset in its tar, size]} of its regular
    files (hard links: their target's), others: paths of its other entries (which hide what
    lies below), gone: paths its whiteouts remove, opaque: directories it makes opaque}."""
    stream, proc = layer_stream(blob, media_type)
    files, others, gone, opaque = {}, [], [], []
    with tarfile.open(fileobj=stream, mode="r|") as t:
        for m in t:
            name = norm(m.name)
            base = name.rsplit("/", 1)[-1]
            parent = name.rsplit("/", 1)[0] if "/" in name else ""
            if base == ".wh..wh..opq":
                opaque.append(parent)
            elif base.startswith(".wh."):
                gone.append(f"{parent}/{base[4:]}".lstrip("/"))
            elif m.isreg():
                files[name] = [m.offset_data, m.size]
            elif m.islnk() and norm(m.linkname) in files:
                files[name] = files[norm(m.linkname)]
            else:
                others.append(name)
    stream.close()
    if proc and proc.wait() != 0:
        raise RuntimeError(f"{blob}: zstd -dc failed")
    return {"files": files, "others": others, "gone": gone, "opaque": opaque}


def merge(per_layer):
    """{path: (layer index, data offset, size)} of the regular files of the merged tree, from
    each layer's entries (lowest first), whiteouts and opaque directories applied."""
    merged = {}
    for i, e in enumerate(per_layer):
        for d in e["opaque"]:
            prefix = d + "/" if d else ""
            for k in [k for k in merged if k.startswith(prefix)]:
                del merged[k]
        for g in e["gone"]:
            for k in [k for k in merged if k == g or k.startswith(g + "/")]:
                del merged[k]
        for k in e["others"]:
            merged.pop(k, None)
        for k, (off, size) in e["files"].items():
            merged[k] = (i, off, size)
    return merged


# ---------------------------------------------------------------------------------------------
# Compressed bounds

class ZStream(ctypes.Structure):
    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_uint), ("total_in", ctypes.c_ulong),
                ("next_out", ctypes.c_void_p), ("avail_out", ctypes.c_uint), ("total_out", ctypes.c_ulong),
                ("msg", ctypes.c_char_p), ("state", ctypes.c_void_p), ("zalloc", ctypes.c_void_p),
                ("zfree", ctypes.c_void_p), ("opaque", ctypes.c_void_p), ("data_type", ctypes.c_int),
                ("adler", ctypes.c_ulong), ("reserved", ctypes.c_ulong)]


def deflate_blocks(blob):
    """[(uncompressed offset, compressed bit offset)] where each deflate block (and each gzip
    member) of a gzip file starts, and the end as the last entry."""
    z = ctypes.CDLL(ctypes.util.find_library("z"))
    z.zlibVersion.restype = ctypes.c_char_p
    data = Path(blob).read_bytes()
    src = ctypes.create_string_buffer(data, len(data))
    out = ctypes.create_string_buffer(1 << 18)
    s = ZStream()
    if z.inflateInit2_(ctypes.byref(s), 31, z.zlibVersion(), ctypes.sizeof(ZStream)) != 0:
        raise RuntimeError("inflateInit2 failed")
    base = ctypes.addressof(src)
    s.next_in, s.avail_in = base, len(data)
    bounds, member_in, member_out = [(0, 0)], 0, 0
    try:
        while True:
            s.next_out, s.avail_out = ctypes.addressof(out), len(out)
            r = z.inflate(ctypes.byref(s), 5)  # Z_BLOCK
            if r == 1:  # Z_STREAM_END: the member's end, after its trailer
                member_in, member_out = s.next_in - base, member_out + s.total_out
                bounds.append((member_out, member_in * 8))
                if s.avail_in == 0:
                    break
                z.inflateReset(ctypes.byref(s))
                continue
            if r not in (0, -5):  # Z_OK, Z_BUF_ERROR (output full)
                raise RuntimeError(f"{blob}: inflate failed ({r})")
            if s.avail_in == 0 and r == -5:
                break
            # At a block's end, not the member's last: bit offset of the next block.
            if s.data_type & 128 and not s.data_type & 64:
                bits = (s.next_in - base) * 8 - (s.data_type & 7)
                bounds.append((member_out + s.total_out, bits))
    finally:
        z.inflateEnd(ctypes.byref(s))
    return sorted(set(bounds))


def zstd_frames(blob):
    """[(uncompressed offset, compressed bit offset)] where each zstd frame starts, skippable
    frames adding no uncompressed bytes, and the end as the last entry."""
    zs = ctypes.CDLL(ctypes.util.find_library("zstd"))
    zs.ZSTD_findFrameCompressedSize.restype = ctypes.c_size_t
    zs.ZSTD_getFrameContentSize.restype = ctypes.c_ulonglong
    zs.ZSTD_isError.restype = ctypes.c_uint
    data = Path(blob).read_bytes()
    src = ctypes.create_string_buffer(data, len(data))
    base = ctypes.addressof(src)
    pos, out, bounds = 0, 0, [(0, 0)]
    while pos < len(data):
        magic = int.from_bytes(data[pos:pos + 4], "little")
        if magic & 0xFFFFFFF0 == 0x184D2A50:
            size, content = 8 + int.from_bytes(data[pos + 4:pos + 8], "little"), 0
        elif magic == ZSTD_MAGIC:
            size = zs.ZSTD_findFrameCompressedSize(ctypes.c_void_p(base + pos), ctypes.c_size_t(len(data) - pos))
            if zs.ZSTD_isError(ctypes.c_size_t(size)):
                raise RuntimeError(f"{blob}: bad zstd frame at {pos}")
            content = zs.ZSTD_getFrameContentSize(ctypes.c_void_p(base + pos), ctypes.c_size_t(size))
            if content >= 2 ** 64 - 2:  # unknown or error: decompress it to know
                content = len(subprocess.run(["zstd", "-dcq"], input=data[pos:pos + size],
                                             capture_output=True, check=True).stdout)
        else:
            raise RuntimeError(f"{blob}: no zstd frame at {pos}")
        pos, out = pos + size, out + content
        bounds.append((out, pos * 8))
    return sorted(set(bounds))


def covering(bounds, ranges):
    """Compressed bytes of the blocks (`bounds`: [(uncompressed, compressed bit)] starts) that
    cover the uncompressed `ranges` ([(offset, size)]), each block counted once."""
    starts = [u for u, _ in bounds]
    spans = []
    for off, size in ranges:
        if size <= 0:
            continue
        first = bisect.bisect_right(starts, off) - 1
        last = bisect.bisect_left(starts, off + size)  # the first bound at or past the end
        last = min(last, len(bounds) - 1)
        spans.append((bounds[first][1] // 8, -(-bounds[last][1] // 8)))
    spans.sort()
    total, end = 0, -1
    for a, b in spans:
        if a >= end:
            total += b - a
        elif b > end:
            total += b - end
        end = max(end, b)
    return total


# ---------------------------------------------------------------------------------------------
# The floor

def manifest_of(layout, ref):
    layout = Path(layout)

    def blob(digest):
        algo, _, hexd = digest.partition(":")
        return layout / "blobs" / algo / hexd
    for m in json.loads((layout / "index.json").read_text()).get("manifests", []):
        if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == ref:
            manifest = json.loads(blob(m["digest"]).read_text())
            return m["size"], manifest, blob
    raise RuntimeError(f"{layout}: no manifest with the ref {ref}")


def toc_bytes(layer, bounds, files_of_layer):
    """What a mount needs of the layer beside imgfs's index: an eStargz TOC or a zstd:chunked
    one; 0 for a plain layer (imgfs's index covers it)."""
    ann = layer.get("annotations") or {}
    pos = ann.get(CHUNKED_POSITION) or ann.get(CHUNKED_POSITION_OLD)
    if pos:
        return int(pos.split(":")[1])
    toc = files_of_layer.get(ESTARGZ_TOC)
    if toc:
        starts = [u for u, _ in bounds]
        first = bisect.bisect_right(starts, toc[0] - 512) - 1  # the member with its header
        return layer["size"] - bounds[first][1] // 8
    return 0


def floor(layout, ref, files, index_bytes=0, cache=None):
    """The floor of fetching `files` (paths in the merged tree) of the image `ref` in the OCI
    layout: {bytes, data, index, files, missing}. `index_bytes`: an index beside the image
    (imgfs's artifact). `cache`: a directory keeping each layer's bounds and files by digest."""
    manifest_size, manifest, blob = manifest_of(layout, ref)
    layers = manifest["layers"]
    per_layer = []
    for l in layers:
        path, kept = blob(l["digest"]), None
        if cache:
            kept = Path(cache) / (l["digest"].replace(":", "-") + ".json")
            if kept.exists():
                per_layer.append(json.loads(kept.read_text()))
                continue
        media = l["mediaType"]
        bounds = zstd_frames(path) if "zstd" in media else deflate_blocks(path) if "gzip" in media else None
        entry = dict(layer_entries(path, media), bounds=bounds)
        if kept:
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps(entry))
        per_layer.append(entry)
    merged = merge(per_layer)
    want, missing = {}, []
    for f in files:
        where = merged.get(f)
        if where is None:
            missing.append(f)
            continue
        want.setdefault(where[0], []).append((where[1], where[2]))
    data = 0
    for i, ranges in want.items():
        bounds = per_layer[i]["bounds"]
        data += covering(bounds, ranges) if bounds else sum(s for _, s in ranges)
    tocs = sum(toc_bytes(l, e["bounds"] or [], e["files"])
               for l, e in zip(layers, per_layer))
    index = manifest_size + manifest["config"]["size"] + index_bytes + tocs
    return {"bytes": data + index, "data": data, "index": index, "files": len(files) - len(missing),
            "file_bytes": sum(merged[f][2] for f in files if f in merged), "missing": missing}


def link_time(nbytes, rate_bits, rtt):
    return nbytes * 8 / rate_bits + rtt


def main():
    if "--" not in sys.argv or len(sys.argv) < 5:
        sys.exit("usage: floor.py LAYOUT REF TREE [INDEX_BYTES] -- CMD...")
    sep = sys.argv.index("--")
    layout, ref, tree = sys.argv[1:4]
    index = int(sys.argv[4]) if sep > 4 else 0
    cmd = sys.argv[sep + 1:]
    if not shutil.which("strace"):
        sys.exit("floor.py: strace not found")
    files = opened_files(Path(tree), cmd)
    print(json.dumps(floor(layout, ref, files, index), indent=1))


if __name__ == "__main__":
    main()
