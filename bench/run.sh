#!/usr/bin/env bash
# imgfs benchmark suite: imgfs side by side with the native extracted tree, ratarmount,
# archivemount, squashfuse, bubblewrap and docker, on the Debian python test image and on a
# large synthetic image (200,000 small files + one 2 GiB file).
#
#   bench/run.sh            full run (about an hour; needs ~25 GB free under $IMGFS_BENCH_WORK)
#   bench/run.sh --quick    fewer runs, python image only
#   bench/run.sh --sandbox [--quick]
#                           sandbox start-up only (bench/sandbox.py: imgfs run beside bwrap and
#                           docker run, as root and as an unprivileged account; a few minutes)
#   bench/run.sh --sources [--quick]
#                           images of layers without a daemon only (bench/sources.py: cold
#                           mounts of OCI layouts beside decompression and umoci unpack; warm
#                           mount, run and walk; cold start from a loopback registry shaped to
#                           100 Mbit/s beside docker pull and skopeo + umoci; about 10 minutes)
#   bench/run.sh --lazy     lazy registry images only (bench/lazy.py: cold starts from a loopback
#                           registry shaped to 100 Mbit/s with and without imgfs's index beside
#                           docker pull, a 2 GiB image, eight nodes at once, span sizes, warm
#                           figures beside the OCI layout; about 30 minutes, ~10 GB free)
#   bench/run.sh --containerd
#                           containerd with imgfs's snapshotter beside its overlayfs one
#                           (bench/containerd.py: cold rpull + run at 100 Mbit/s against pull +
#                           run, warm starts, eight containers at once, memory; about 10 minutes)
#   bench/run.sh --all      every part above in one invocation, one after the other (about two
#                           hours): the whole of bench/RESULTS.md from one run of one checkout
#
# Run as root on Debian 12. Writes bench/RESULTS.md, bench/chart.png and raw data under
# bench/results/. Every report names the commit it measured, recorded before the build, and
# says "-dirty" when the tree differed from it (the benchmark's own outputs aside) or changed
# during the run; RESULTS.md opens with the runs its sections come from. Work files (synthetic
# image, squashfs images, caches, venv) live in $IMGFS_BENCH_WORK (default /var/tmp/imgfs-bench)
# and are reused by later runs.
set -euo pipefail

die() { echo "bench/run.sh: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root"
ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
WORK=${IMGFS_BENCH_WORK:-/var/tmp/imgfs-bench}
export IMGFS_BENCH_WORK=$WORK
cd "$ROOT"
PART=all
case "${1:-}" in
    --sandbox) PART=sandbox; shift ;;
    --sources) PART=sources; shift ;;
    --lazy) PART=lazy; shift ;;
    --containerd) PART=containerd; shift ;;
    --all) PART=every; shift; [ "$#" -eq 0 ] || die "--all takes no other option" ;;
esac

# One id for this invocation: the sections it writes record it, and RESULTS.md tells from it
# whether they come from one run.
IMGFS_BENCH_RUN="$(date -u +%Y%m%dT%H%M%SZ)-$$"
export IMGFS_BENCH_RUN
# The checkout measured, recorded before anything is built.
IMGFS_BENCH_CHECKOUT=$(/usr/bin/python3 "$ROOT/bench/common.py" checkout) || die "could not record the checkout"
export IMGFS_BENCH_CHECKOUT
if ! /usr/bin/python3 -c 'import json, os, sys; sys.exit(json.loads(os.environ["IMGFS_BENCH_CHECKOUT"])["dirty"])'; then
    echo "bench/run.sh: WARNING: the tree is not clean; the reports of this run will say -dirty" >&2
fi

contrib/setup.sh || die "contrib/setup.sh failed"
tests/fixtures/make-debian-image.sh || die "tests/fixtures/make-debian-image.sh failed"

# The peers, from Debian's packages.
if [ "$PART" = sandbox ]; then
    pkgs=(hyperfine bubblewrap util-linux passwd)
elif [ "$PART" = sources ]; then
    pkgs=(hyperfine bubblewrap umoci skopeo zstd gzip iproute2 curl util-linux findutils)
elif [ "$PART" = lazy ]; then
    pkgs=(hyperfine bubblewrap umoci skopeo zstd gzip iproute2 curl util-linux findutils strace python3-venv)
elif [ "$PART" = containerd ]; then
    pkgs=(hyperfine bubblewrap umoci skopeo zstd gzip iproute2 curl util-linux findutils containerd runc
          stargz-snapshotter)
elif [ "$PART" = every ]; then
    pkgs=(hyperfine bubblewrap archivemount libfuse2 squashfuse squashfs-tools python3-venv attr
          util-linux findutils coreutils passwd umoci skopeo zstd gzip iproute2 curl containerd runc
          stargz-snapshotter strace)
else
    pkgs=(hyperfine bubblewrap archivemount libfuse2 squashfuse squashfs-tools python3-venv attr
          util-linux findutils coreutils)
fi
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "bench/run.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi

# The image of layers in OCI layouts (reused when up to date).
if [ "$PART" = sources ] || [ "$PART" = lazy ] || [ "$PART" = containerd ] || [ "$PART" = every ]; then
    tests/fixtures/make-layered.sh || die "tests/fixtures/make-layered.sh failed"
fi
# The same image as eStargz, converted by ctr-remote (the lazy part's eStargz rows).
if [ "$PART" = lazy ] || [ "$PART" = containerd ] || [ "$PART" = every ]; then
    tests/fixtures/make-estargz.sh || die "tests/fixtures/make-estargz.sh failed"
fi

# ratarmount and matplotlib, in a venv of Debian's python3 (the lazy part draws with matplotlib;
# the sandbox and sources parts need neither).
RATARMOUNT_VERSION=1.3.0
MATPLOTLIB_VERSION=3.11.2
VENV=$WORK/venv
mkdir -p "$WORK"
if [ "$PART" = all ] || [ "$PART" = every ] || [ "$PART" = lazy ]; then
    if [ ! -x "$VENV/bin/python3" ]; then
        /usr/bin/python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
    fi
    if ! "$VENV/bin/python3" -c 'import ratarmount, matplotlib' 2>/dev/null \
       || [ "$("$VENV/bin/python3" -c 'import importlib.metadata as m; print(m.version("ratarmount"), m.version("matplotlib"))')" \
            != "$RATARMOUNT_VERSION $MATPLOTLIB_VERSION" ]; then
        echo "bench/run.sh: installing ratarmount $RATARMOUNT_VERSION and matplotlib $MATPLOTLIB_VERSION into $VENV"
        "$VENV/bin/pip" install -q "ratarmount==$RATARMOUNT_VERSION" "matplotlib==$MATPLOTLIB_VERSION" \
            || die "pip install ratarmount matplotlib failed"
    fi
fi

[ -d "$HOME/.cargo/bin" ] && PATH=$PATH:$HOME/.cargo/bin
echo "bench/run.sh: cargo build --release"
cargo build --release --quiet || die "cargo build --release failed"
BIN=${CARGO_TARGET_DIR:-target}/release/imgfs
[ -x "$BIN" ] || die "$BIN missing after the build"

# A plain PATH: the sandboxed commands must find the image's python3, not a host shim.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
[ "$PART" = sandbox ] && exec /usr/bin/python3 "$ROOT/bench/sandbox.py" "$@"
[ "$PART" = sources ] && exec /usr/bin/python3 "$ROOT/bench/sources.py" "$@"
[ "$PART" = lazy ] && exec "$VENV/bin/python3" "$ROOT/bench/lazy.py" "$@"
[ "$PART" = containerd ] && exec /usr/bin/python3 "$ROOT/bench/containerd.py" "$@"
if [ "$PART" = every ]; then
    part() {  # one driver; an interrupted one stops the run
        local rc=0
        "$@" || rc=$?
        [ "$rc" -ne 130 ] || exit 130
        return "$rc"
    }
    failed=()
    part "$VENV/bin/python3" "$ROOT/bench/bench.py" || failed+=(bench.py)
    part /usr/bin/python3 "$ROOT/bench/sandbox.py" || failed+=(sandbox.py)
    part /usr/bin/python3 "$ROOT/bench/sources.py" || failed+=(sources.py)
    part "$VENV/bin/python3" "$ROOT/bench/lazy.py" || failed+=(lazy.py)
    part /usr/bin/python3 "$ROOT/bench/containerd.py" || failed+=(containerd.py)
    [ "${#failed[@]}" -eq 0 ] || die "failed: ${failed[*]}; RESULTS.md's runs table names the runs its sections come from"
    exit 0
fi
exec "$VENV/bin/python3" "$ROOT/bench/bench.py" "$@"
