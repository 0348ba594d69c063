#!/usr/bin/env python3
"""The 2 GiB image of the lazy benchmark: the layered test image (an OCI layout, ref `layers`)
with extra layers of files that nothing in the benchmark reads, written as an OCI layout of its
own whose ref is `big`.

Each extra layer is a tar of files under /opt/bulk/ holding seeded pseudo-random bytes (they do
not compress: the layer's gzip is as large as its files), gzip level 1. The base layers' blobs
are hard-linked from the source layout; the config gains the extra layers' diff ids and history
entries. The layout is made once and reused while its stamp (the parameters and the source
manifest's digest) matches.

Usage: make_big_image.py SRC_LAYOUT SRC_REF DEST_LAYOUT
"""

import gzip
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REF = "big"
EXTRA_LAYERS = 2
FILES_PER_LAYER = 16
FILE_BYTES = 64 << 20         # 2 layers × 16 files × 64 MiB = 2 GiB
CHUNK = 4 << 20               # generated and written in pieces, not held whole
SEED = 20261130
GZIP_LEVEL = 1                # random bytes do not compress at any level: be quick
MTIME = 1700000000
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def blob_path(layout, digest):
    algo, _, hexd = digest.partition(":")
    return layout / "blobs" / algo / hexd


def source_manifest(layout, ref):
    index = json.loads((layout / "index.json").read_text())
    for m in index["manifests"]:
        if (m.get("annotations") or {}).get("org.opencontainers.image.ref.name") == ref:
            return m["digest"], json.loads(blob_path(layout, m["digest"]).read_text())
    sys.exit(f"make_big_image.py: {layout}: no manifest with the ref {ref}")


class Hashing(io.RawIOBase):
    """A write-only file that hashes and counts what passes through to `inner`."""

    def __init__(self, inner):
        self.inner, self.sha, self.size = inner, hashlib.sha256(), 0

    def writable(self):
        return True

    def write(self, b):
        self.sha.update(b)
        self.size += len(b)
        return self.inner.write(b)


class RandomReader(io.RawIOBase):
    """`size` seeded pseudo-random bytes, read in pieces."""

    def __init__(self, rng, size):
        self.rng, self.left = rng, size

    def readable(self):
        return True

    def readinto(self, buf):
        n = min(len(buf), self.left, CHUNK)
        buf[:n] = self.rng.randbytes(n)
        self.left -= n
        return n


def add_dir(tar, name):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, MTIME
    tar.addfile(info)


def write_layer(args):
    """Writes extra layer `i` into blobs/sha256 under a temporary name; returns (digest,
    size, diff id)."""
    dest, i = args
    rng = random.Random(SEED + i)
    tmp = dest / "blobs" / "sha256" / f".layer-{i}.tmp"
    with open(tmp, "wb") as raw:
        outer = Hashing(raw)
        with gzip.GzipFile(fileobj=outer, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz:
            inner = Hashing(gz)
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                if i == 0:
                    add_dir(tar, "opt/bulk")
                add_dir(tar, f"opt/bulk/{i}")
                for f in range(FILES_PER_LAYER):
                    info = tarfile.TarInfo(f"opt/bulk/{i}/data-{f:02}.bin")
                    info.size, info.mode, info.mtime = FILE_BYTES, 0o644, MTIME
                    tar.addfile(info, RandomReader(rng, FILE_BYTES))
    digest = "sha256:" + outer.sha.hexdigest()
    tmp.rename(blob_path(dest, digest))
    return digest, outer.size, "sha256:" + inner.sha.hexdigest()


def write_blob(dest, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob_path(dest, digest).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def stamp_of(src_digest):
    return json.dumps({"src": src_digest, "layers": EXTRA_LAYERS, "files": FILES_PER_LAYER,
                       "file_bytes": FILE_BYTES, "seed": SEED, "level": GZIP_LEVEL})


def make(src, src_ref, dest):
    src_digest, manifest = source_manifest(src, src_ref)
    stamp = dest / "stamp.json"
    if stamp.exists() and stamp.read_text() == stamp_of(src_digest):
        return
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "blobs" / "sha256").mkdir(parents=True)
    for layer in manifest["layers"]:
        os.link(blob_path(src, layer["digest"]), blob_path(dest, layer["digest"]))
    with ProcessPoolExecutor(max_workers=min(EXTRA_LAYERS, os.cpu_count() or 1)) as pool:
        extra = list(pool.map(write_layer, [(dest, i) for i in range(EXTRA_LAYERS)]))

    config = json.loads(blob_path(src, manifest["config"]["digest"]).read_text())
    config["rootfs"]["diff_ids"] += [diff for _, _, diff in extra]
    config.setdefault("history", []).extend(
        {"created_by": f"bench/make_big_image.py: layer {i} of unread files"} for i in range(EXTRA_LAYERS))
    cfg = write_blob(dest, json.dumps(config).encode())
    layers = manifest["layers"] + [{"mediaType": MEDIA_LAYER, "digest": d, "size": s} for d, s, _ in extra]
    new = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
           "config": {"mediaType": MEDIA_CONFIG, **cfg}, "layers": layers}
    man = write_blob(dest, json.dumps(new).encode())
    index = {"schemaVersion": 2, "manifests": [{"mediaType": MEDIA_MANIFEST, **man,
                                                "annotations": {"org.opencontainers.image.ref.name": REF}}]}
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    stamp.write_text(stamp_of(src_digest))


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[-1])
    make(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))


if __name__ == "__main__":
    main()
