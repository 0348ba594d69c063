#!/usr/bin/env bash
# imgfs in one command on a fresh Debian 12 machine (as root): installs what is missing,
# builds imgfs, makes a small Debian image from Debian packages when no image is given,
# then mounts it (cold, then warm), reads from it and runs a command in a sandbox on it;
# then starts a registry on loopback, pushes the image there, publishes imgfs's index beside
# it and runs it lazily from an empty cache, printing what that fetched beside the image's
# size.
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
REG=$(mktemp -d /tmp/imgfs-demo-registry.XXXXXX)
REGISTRY_PID=
cleanup() {
  "$IMGFS" umount "$MNT" 2>/dev/null || true
  # The image's shared servers, which imgfs run leaves for a while (--linger).
  pkill -TERM -f -- "__serve .*$CACHE" 2>/dev/null || true
  [ -z "$REGISTRY_PID" ] || kill "$REGISTRY_PID" 2>/dev/null || true
  rm -rf "$CACHE" "$REG"
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

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "== done ($IMAGE is not in the Docker daemon: no registry demo); nothing left mounted"
  exit 0
fi
echo "== lazily, from a registry"
# Debian's docker-registry on a free loopback port, its storage in a temporary directory.
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s/data\nhttp:\n  addr: 127.0.0.1:%s\n' \
  "$REG" "$PORT" >"$REG/config.yml"
docker-registry serve "$REG/config.yml" >"$REG/log" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$PORT/v2/" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$PORT/v2/" >/dev/null || { echo "demo.sh: the registry did not start (see $REG/log)" >&2; exit 1; }
REMOTE=127.0.0.1:$PORT/demo/image:1
echo "pushing $IMAGE to $REMOTE (skopeo, gzip layers)"
skopeo copy -q --dest-tls-verify=false "docker-daemon:$IMAGE" "docker://$REMOTE"
SIZE=$(skopeo inspect --tls-verify=false --raw "docker://$REMOTE" | python3 -c 'import json, sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))')
echo "publishing imgfs's index beside it (the image itself is not touched)"
"$IMGFS" index push --cache-dir "$CACHE/push" "docker://$REMOTE" >/dev/null
echo "running it from an empty cache: only what the command reads is fetched"
COLD=$CACHE/cold
t0=$(ms); "$IMGFS" run --cache-dir "$COLD" --linger 0 "docker://$REMOTE" -- sh -c 'echo "inside: $(. /etc/os-release; echo $PRETTY_NAME)"'; t1=$(ms)
FETCHED=$(du -cB1 "$COLD"/layers/*/blob 2>/dev/null | tail -n 1 | cut -f 1)
echo "done in $(( (t1 - t0) / 1000000 )) ms; fetched $(( FETCHED / 1024 )) KiB of the image's $(( SIZE / 1024 )) KiB of layers ($(( FETCHED * 100 / SIZE ))%)"
echo "== done: nothing left mounted"
