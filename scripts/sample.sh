#!/usr/bin/env bash
# A short tour of semithin on a small sample root filesystem:
# builds semithin (release), makes a tree with directories, files, a symlink, a hardlink,
# a setuid file and an extended attribute, commits it to channel lab/stable, changes a few
# files, commits again, then shows log, diff, checkout and fsck, and signs the release as TUF
# metadata (trust init, publish, trust status). Everything happens in a
# temporary directory that is removed on exit.
# Usage: scripts/sample.sh   (run as root to also get file ownership other than your own)
set -euo pipefail
cd "$(dirname "$0")/.."

echo "+ cargo build --release -p semithin" >&2
cargo build --release -p semithin
BIN=$(realpath "${CARGO_TARGET_DIR:-target}/release/semithin")

WORK=$(mktemp -d "${TMPDIR:-/tmp}/semithin-sample.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# work with short relative paths inside the temporary directory
cd "$WORK"
ROOT=root
export SEMITHIN_REPO=repo

# prints a command line, single-quoting the words that need it
print_cmd() {
  local w out='$'
  for w in "$@"; do
    if [[ $w =~ ^[A-Za-z0-9_./:=~+,@%-]+$ ]]; then
      out+=" $w"
    else
      out+=" '${w//\'/\'\\\'\'}'"
    fi
  done
  printf '\n%s\n' "$out"
}
# st ARGS... : prints the semithin command line, then runs it
st() {
  print_cmd semithin "$@"
  "$BIN" "$@"
}
# show CMD... : prints and runs any other command
show() {
  print_cmd "$@"
  "$@"
}

echo "== building a sample root filesystem in $WORK/$ROOT"
mkdir -p "$ROOT"/{etc,usr/bin,usr/lib,usr/share/doc/demo,var/log,home/user,tmp}
chmod 1777 "$ROOT/tmp"
echo "sample" >"$ROOT/etc/hostname"
printf 'NAME="semithin sample"\nVERSION_ID=1\n' >"$ROOT/etc/os-release"
printf '#!/bin/sh\necho hello from the sample root\n' >"$ROOT/usr/bin/hello"
chmod 755 "$ROOT/usr/bin/hello"
# a larger file, so that a small change in it is stored as a few new chunks only
head -c 3000000 /dev/urandom >"$ROOT/usr/lib/libdemo.so.1"
ln -s libdemo.so.1 "$ROOT/usr/lib/libdemo.so"
ln -s usr/bin "$ROOT/bin"
ln "$ROOT/usr/bin/hello" "$ROOT/usr/bin/hello-again" # hardlink
cp "$ROOT/usr/bin/hello" "$ROOT/usr/bin/su-demo"
chmod 4755 "$ROOT/usr/bin/su-demo" # setuid
setfattr -n user.semithin.note -v "kept across commit and checkout" "$ROOT/etc/hostname"
seq 1 2000 >"$ROOT/usr/share/doc/demo/numbers.txt"
: >"$ROOT/var/log/empty.log"
echo "hi" >"$ROOT/home/user/.profile"
if [ "$(id -u)" -eq 0 ]; then
  chown -R 1000:1000 "$ROOT/home/user"
fi

st repo init "$SEMITHIN_REPO"
st commit --channel lab/stable -m "sample root, first version" "$ROOT"

echo
echo "== changing a few files"
echo "sample-2" >"$ROOT/etc/hostname"
setfattr -n user.semithin.note -v "changed in the second version" "$ROOT/etc/hostname"
sed -i 's/^VERSION_ID=1$/VERSION_ID=2/' "$ROOT/etc/os-release"
printf 'patched' | dd of="$ROOT/usr/lib/libdemo.so.1" bs=1 seek=1500000 conv=notrunc status=none
rm "$ROOT/usr/share/doc/demo/numbers.txt"
echo "welcome to version 2" >"$ROOT/etc/motd"

st commit --channel lab/stable -m "sample root, second version" "$ROOT"
st log
st diff 'lab/stable~1' lab/stable
st checkout lab/stable checkout
st fsck

echo
echo "== the checkout next to the source tree"
show diff -r --no-dereference "$ROOT" checkout && echo "contents identical"
show stat -c '%A %h %u:%g %n' checkout/usr/bin/hello checkout/usr/bin/hello-again \
  checkout/usr/bin/su-demo checkout/bin checkout/home/user/.profile
show getfattr -d checkout/etc/hostname

echo
echo "== signing the release (TUF metadata; the root key stays in a file you keep offline)"
st trust init --root-key root.key
st publish lab/stable
st trust status
