#!/usr/bin/env bash
# Builds imgfs and installs it with its shell completions and manual pages (as root).
#
#   contrib/install.sh [PREFIX]      default PREFIX: /usr/local
#
# Installs PREFIX/bin/imgfs, PREFIX/share/man/man1/imgfs*.1, and completions for bash
# (PREFIX/share/bash-completion/completions/imgfs), zsh (PREFIX/share/zsh/site-functions/_imgfs)
# and fish (PREFIX/share/fish/vendor_completions.d/imgfs.fish), and links /sbin/mount.imgfs (the
# helper mount(8) runs for `mount -t imgfs` and fstab entries) to the binary.
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
PREFIX=${1:-/usr/local}
cd "$ROOT"
[ -d "$HOME/.cargo/bin" ] && PATH=$PATH:$HOME/.cargo/bin

# The sandbox's seccomp filters are compiled by libseccomp: the build links it.
if ! echo 'int main(void) { return 0; }' | cc -x c - -lseccomp -o /dev/null 2>/dev/null; then
    echo "contrib/install.sh: libseccomp's development library is missing (Debian: apt-get install libseccomp-dev)" >&2
    exit 1
fi
cargo build --release --quiet
BIN=$ROOT/target/release/imgfs
install -D -m 0755 "$BIN" "$PREFIX/bin/imgfs"
"$BIN" manpage --dir "$PREFIX/share/man/man1"
install -d "$PREFIX/share/bash-completion/completions" "$PREFIX/share/zsh/site-functions" \
    "$PREFIX/share/fish/vendor_completions.d"
"$BIN" completions bash > "$PREFIX/share/bash-completion/completions/imgfs"
"$BIN" completions zsh > "$PREFIX/share/zsh/site-functions/_imgfs"
"$BIN" completions fish > "$PREFIX/share/fish/vendor_completions.d/imgfs.fish"
# mount(8)'s helper for `mount -t imgfs` and fstab entries of type imgfs.
ln -sf "$PREFIX/bin/imgfs" /sbin/mount.imgfs
echo "installed imgfs in $PREFIX/bin, its manual pages, bash, zsh and fish completions and /sbin/mount.imgfs"
