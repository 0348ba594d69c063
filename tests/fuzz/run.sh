#!/bin/sh
# Fuzzes one target with libFuzzer on a stable toolchain (coverage instrumentation through
# -Cpasses=sancov-module, overflow checks and debug assertions on):
#   tests/fuzz/run.sh scan|index|layers|manifest|seek|seek-build|artifact|toc [SECONDS]
# Seeds: the fixture archives (and the indexes and seek tables imgfs builds for them).
# Crashes, hangs (-timeout) and over-allocation (-rss_limit_mb) land in
# tests/fuzz/artifacts/TARGET/; copy each into tests/fuzz/regressions/TARGET/ once fixed,
# where the test suite replays it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
target=${1:?usage: tests/fuzz/run.sh scan|index|layers|manifest|seek|seek-build|artifact|toc [SECONDS]}
seconds=${2:-600}
case $target in scan|index|layers|manifest|seek|seek-build|artifact|toc) ;; *) echo "run.sh: unknown target $target" >&2; exit 2 ;; esac

# The seed writer is an ordinary program: built without the instrumentation.
cargo build --release --manifest-path "$here/Cargo.toml" --bin seed-index --bin seed-seek
seed_index=$here/target/release/seed-index
seed_seek=$here/target/release/seed-seek

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
    elif [ "$target" = layers ]; then
        # Each fixture archive over the next, behind the u32 that says where the first ends.
        set -- "$fixtures"/*.tar
        prev=$1
        for t in "$@"; do
            python3 -c 'import struct,sys; a=open(sys.argv[1],"rb").read(); b=open(sys.argv[2],"rb").read(); sys.stdout.buffer.write(struct.pack("<I",len(a))+a+b)' \
                "$prev" "$t" >"$corpus/$(basename "$prev" .tar)-$(basename "$t" .tar)"
            prev=$t
        done
    elif [ "$target" = manifest ]; then
        # The layered fixtures' documents: index.json and every small JSON blob.
        layered=${IMGFS_FIXTURES:-/var/tmp/imgfs-fixtures}/layered
        "$root/tests/fixtures/make-layered.sh" >/dev/null
        find "$layered" -name index.json -exec sh -c 'cp "$1" "$2/$(sha256sum "$1" | cut -c1-16)"' _ {} "$corpus" \;
        find "$layered" -path '*/blobs/*' -size -64k -exec sh -c 'head -c1 "$1" | grep -q "{" && cp "$1" "$2/"' _ {} "$corpus" \;
    elif [ "$target" = seek ]; then
        "$seed_seek" "$corpus" "$fixtures"/*.tar
    elif [ "$target" = seek-build ]; then
        "$seed_seek" --build "$corpus" "$fixtures"/*.tar
    elif [ "$target" = artifact ]; then
        "$seed_seek" --artifact "$corpus" "$fixtures"/*.tar
    elif [ "$target" = toc ]; then
        "$seed_seek" --toc "$corpus"
    else
        "$seed_index" "$corpus" "$fixtures"/*.tar
    fi
fi
exec "$bin/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="$here/artifacts/$target/" "$corpus"
