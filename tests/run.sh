#!/usr/bin/env bash
# The whole imgfs test suite in one command, on a fresh Debian 12 machine (as root):
# host set-up, cached fixtures, checks, the fuzz targets built, then every test.
#
# The tests run under cargo-nextest, a process per test and as many at once as there are
# CPUs, with the rules of tests/nextest.toml; extra arguments go to `cargo nextest run`
# (say, a filter: tests/run.sh -E 'test(/^lazy::/)').
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
cd "$ROOT"
[ -d "$HOME/.cargo/bin" ] && PATH=$PATH:$HOME/.cargo/bin
START=$SECONDS
phase() { echo "== $* (at $((SECONDS - START)) s)"; }

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-nextest (cargo install --locked cargo-nextest)"
    cargo install --locked --quiet cargo-nextest || {
        echo "run.sh: cargo-nextest is missing and cargo install failed" >&2
        exit 1
    }
fi
contrib/setup.sh
tests/fixtures/make-debian-image.sh
tests/fixtures/make-archives.sh "${IMGFS_FIXTURES:-/var/tmp/imgfs-fixtures}/archives"
tests/fixtures/make-layered.sh
tests/fixtures/make-estargz.sh
phase "checks: format, lints, docs"
python3 tests/structure.py
cargo fmt --check
cargo clippy --all-targets --release --quiet -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
phase "fuzz targets: build only"
# Its own package (a lock file of its own, seeded from the project's so that the
# dependencies built for the tests serve it too); fuzzing itself is tests/fuzz/run.sh.
[ -f tests/fuzz/Cargo.lock ] || cp Cargo.lock tests/fuzz/Cargo.lock
cargo build --release --quiet --manifest-path tests/fuzz/Cargo.toml \
    --target-dir "${CARGO_TARGET_DIR:-$ROOT/target}"
phase "tests"
# Sandboxes leave a shared server per image for a few minutes (imgfs run --linger); stop
# the ones serving the fixtures' caches when the suite ends.
stop_shared() {
    pkill -TERM -f -- "__serve .*${IMGFS_FIXTURES:-/var/tmp/imgfs-fixtures}.*--idle-exit-ms" || true
}
trap stop_shared EXIT
cargo nextest run --release --config-file tests/nextest.toml "$@"
cargo test --release --doc --quiet
phase "done"
