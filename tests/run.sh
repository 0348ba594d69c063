#!/usr/bin/env bash
# The whole imgfs test suite in one command, on a fresh Debian 12 machine (as root):
# host set-up, cached fixtures, then every cargo test.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$ROOT"
[ -d "$HOME/.cargo/bin" ] && PATH=$PATH:$HOME/.cargo/bin

contrib/setup.sh
tests/fixtures/make-debian-image.sh
tests/fixtures/make-archives.sh "${IMGFS_FIXTURES:-/var/tmp/imgfs-fixtures}/archives"
tests/fixtures/make-layered.sh
tests/fixtures/make-estargz.sh
echo "== checks: format, lints, docs"
cargo fmt --check
cargo clippy --all-targets --release --quiet -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
echo "== tests"
# Sandboxes leave a shared server per image for a few minutes (imgfs run --linger); stop
# the ones serving the fixtures' caches when the suite ends.
stop_shared() {
    pkill -TERM -f -- "__serve .*${IMGFS_FIXTURES:-/var/tmp/imgfs-fixtures}.*--idle-exit-ms" || true
}
trap stop_shared EXIT
cargo test --release -- --test-threads=2
