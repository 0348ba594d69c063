#!/usr/bin/env bash
# Host set-up for building and testing imgfs on Debian 12 (run as root).
# Idempotent: installs only missing packages and starts dockerd only when
# no daemon answers.
set -euo pipefail

die() { echo "setup.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"

pkgs=(fuse3 libseccomp-dev docker.io debootstrap libarchive-tools attr tar libcap2-bin procps xxd kmod man-db docker-registry podman skopeo umoci apache2-utils openssl stargz-snapshotter containerd runc protobuf-compiler passt)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi

[ -d "$HOME/.cargo/bin" ] && PATH=$PATH:$HOME/.cargo/bin
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup) and put cargo on PATH"
command -v dockerd >/dev/null || die "dockerd not found even after installing docker.io"

if [ ! -e /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
    [ -e /dev/fuse ] || mknod -m 0666 /dev/fuse c 10 229 2>/dev/null || true
    [ -e /dev/fuse ] || die "/dev/fuse missing and could not be created (modprobe fuse failed)"
fi
# Users other than root open /dev/fuse for their own sandboxes (imgfs run without root);
# Debian's udev rules make it crw-rw-rw-, which a machine without udev lacks.
chmod 0666 /dev/fuse
# The same for /dev/net/tun, where pasta (passt) makes a sandbox's network interface for a
# user without root, in that user's namespace.
if [ ! -e /dev/net/tun ]; then
    modprobe tun 2>/dev/null || true
    [ -e /dev/net/tun ] || { mkdir -p /dev/net && mknod -m 0666 /dev/net/tun c 10 200 2>/dev/null; } || true
    [ -e /dev/net/tun ] || die "/dev/net/tun missing and could not be created (modprobe tun failed)"
fi
chmod 0666 /dev/net/tun

if ! docker info >/dev/null 2>&1; then
    log=/var/log/imgfs-dockerd.log
    # pidof skips zombies: a daemon that was just killed does not count as running.
    if ! pidof dockerd >/dev/null; then
        # A killed daemon leaves pid files that may name zombies (where PID 1 does not reap):
        # dockerd would wait for that "running" containerd forever.
        for f in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
            [ -f "$f" ] || continue
            state=$(sed 's/.*) //' "/proc/$(cat "$f")/stat" 2>/dev/null | cut -c1 || true)
            if [ -z "$state" ] || [ "$state" = Z ]; then rm -f "$f"; fi
        done
        echo "setup.sh: starting dockerd (log: $log)"
        setsid dockerd --iptables=false >"$log" 2>&1 < /dev/null &
    fi
    for _ in $(seq 1 30); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || die "dockerd did not answer within 30 s; see $log"
fi
echo "setup.sh: host ready"
