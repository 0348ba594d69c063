#!/usr/bin/env python3
"""Random 4 KiB reads in one file: randread.py FILE COUNT SEED TIME_LIMIT_S

Reads COUNT blocks of 4 KiB at 4 KiB-aligned offsets drawn from a fixed seed (the same offsets
for every file system), stopping early once TIME_LIMIT_S seconds have passed. Prints one JSON
line: {"reads": n, "seconds": t, "bytes": b}. Python start-up is not counted.
"""
import json
import os
import random
import sys
import time


def main():
    path, count, seed, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    blocks = size // 4096
    if blocks < 1:
        sys.exit(f"randread.py: {path} is smaller than 4 KiB")
    rng = random.Random(seed)
    offsets = [rng.randrange(blocks) * 4096 for _ in range(count)]
    got = 0
    n = 0
    start = time.perf_counter()
    for off in offsets:
        data = os.pread(fd, 4096, off)
        if len(data) != 4096:
            sys.exit(f"randread.py: short read at {off}: {len(data)} bytes")
        got += len(data)
        n += 1
        if time.perf_counter() - start > limit:
            break
    elapsed = time.perf_counter() - start
    os.close(fd)
    print(json.dumps({"reads": n, "seconds": elapsed, "bytes": got}))


if __name__ == "__main__":
    main()
