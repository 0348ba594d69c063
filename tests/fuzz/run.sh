#!/bin/sh
# Fuzzes one target with libFuzzer on a stable toolchain (coverage instrumentation through
# -Cpasses=sancov-module, overflow checks and debug assertions on):
#   tests/fuzz/run.sh scan|index [SECONDS]
# Seeds: the fixture archives (and the indexes imgfs builds for them). Crashes, hangs
# (-timeout) and over-allocation (-rss_limit_mb) land in tests/fuzz/artifacts/TARGET/; copy
# each into tests/fuzz/regressions/TARGET/ once fixed, where the test suite replays it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${1:?usage: tests/fuzz/run.sh scan|index [SECONDS]}
seconds=${2:-600}
case $target in scan|index) ;; *) echo "run.sh: unknown target $target" >&2; exit 2 ;; esac

# The seed writer is an ordinary program: built without the instrumentation.
cargo build --release --manifest-path "$here/Cargo.toml" --bin seed-index
seed_index=$here/target/release/seed-index

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps the instrumentation flags off build scripts and proc macros.
triple=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --manifest-path "$here/Cargo.toml" --target "$triple" --bin "$target"
bin=$here/target/$triple/release

fixtures=${IMGFS_FIXTURES:-/var/tmp/imgfs-fixtures}/archives
"$root/tests/fixtures/make-archives.sh" "$fixtures" >/dev/null
corpus=$here/corpus/$target
mkdir -p "$corpus" "$here/artifacts/$target"
if [ -z "$(ls -A "$corpus")" ]; then
    if [ "$target" = scan ]; then
        cp "$fixtures"/*.tar "$corpus"/
    else
        "$seed_index" "$corpus" "$fixtures"/*.tar
    fi
fi
exec "$bin/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="$here/artifacts/$target/" "$corpus"
