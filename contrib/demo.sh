#!/usr/bin/env bash
# imgfs in one command on a fresh Debian 12 machine (as root): installs what is missing,
# builds imgfs, makes a small Debian image from Debian packages when no image is given,
# then mounts it (cold, then warm), reads from it and runs a command in a sandbox on it.
#
#   contrib/demo.sh [IMAGE]        default: imgfs-test/debian-python:bookworm
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$ROOT"
[ -d "$HOME/.cargo/bin" ] && PATH=$PATH:$HOME/.cargo/bin

contrib/setup.sh
IMAGE=${1:-imgfs-test/debian-python:bookworm}
if [ $# -eq 0 ]; then
  tests/fixtures/make-debian-image.sh
fi
echo "== building imgfs"
cargo build --release --quiet
IMGFS=$ROOT/target/release/imgfs

CACHE=$(mktemp -d /tmp/imgfs-demo-cache.XXXXXX)
MNT=$(mktemp -d /tmp/imgfs-demo-mnt.XXXXXX)
cleanup() {
  "$IMGFS" umount "$MNT" 2>/dev/null || true
  # The image's shared server, which imgfs run leaves for a while (--linger).
  pkill -TERM -f -- "__serve .*$CACHE" 2>/dev/null || true
  rm -rf "$CACHE"
  rmdir "$MNT" 2>/dev/null || true
}
trap cleanup EXIT

ms() { date +%s%N; }
echo "== cold mount of $IMAGE (export and index into an empty cache)"
t0=$(ms); "$IMGFS" mount --cache-dir "$CACHE" "$IMAGE" "$MNT"; t1=$(ms)
echo "ready in $(( (t1 - t0) / 1000000 )) ms"
echo "== reading from the mount"
head -n 2 "$MNT/etc/os-release"
ls -l "$MNT/usr/bin" | head -n 5 || true  # head closes the pipe early
"$IMGFS" umount "$MNT"

echo "== warm mount (cached: no export)"
t0=$(ms); "$IMGFS" mount --cache-dir "$CACHE" "$IMAGE" "$MNT"; t1=$(ms)
echo "ready in $(( (t1 - t0) / 1000000 )) ms; $(find "$MNT" | wc -l) entries visible"
"$IMGFS" umount "$MNT"

echo "== looking inside without mounting"
"$IMGFS" ls -l --cache-dir "$CACHE" "$IMAGE" /usr/bin | head -n 4 || true
"$IMGFS" stat --cache-dir "$CACHE" -c '%n: %s bytes, %A %U:%G' "$IMAGE" /etc/passwd

echo "== a throwaway sandbox rooted in the image"
t0=$(ms); "$IMGFS" run --cache-dir "$CACHE" "$IMAGE" -- sh -c 'echo "inside: $(. /etc/os-release; echo $PRETTY_NAME), pid $$, $(ls / | wc -l) entries in /"'; t1=$(ms)
echo "done in $(( (t1 - t0) / 1000000 )) ms"
t0=$(ms); "$IMGFS" run --cache-dir "$CACHE" "$IMAGE" -- true; t1=$(ms)
echo "again (the image's shared server is still up, its caches warm): $(( (t1 - t0) / 1000000 )) ms"
echo "== done: nothing left mounted"
