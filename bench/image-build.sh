#!/usr/bin/env bash
# Image build benchmark: the time of `semithin image build PROFILE` against plain mmdebstrap
# and plain debootstrap of the same package list (minbase bookworm + PACKAGES), in one run, all
# from the same local mirror on loopback (tests/fixtures/debian-mirror.sh, cached; a Python
# HTTP server on 127.0.0.1), so the network does not enter the figures.
#
# What each one does:
#   semithin image build   mmdebstrap minbase, then in a chroot: deb822 sources, apt-get update,
#                          apt-get install PACKAGES, cleaning, times clamped; commit into a
#                          fresh repository (the whole command, commit included)
#   mmdebstrap             mmdebstrap --variant=minbase --include=PACKAGES into a directory
#   debootstrap            debootstrap --variant=minbase --include=PACKAGES into a directory
# Each runs RUNS times (default 2; the first run of a tool warms the page cache for it); the
# table gives every run, the package count of each result (the same list or the comparison is
# void) and the ratio of the best run to semithin's best.
#
# Usage (as root, from the repository root):  bench/image-build.sh [WORK_DIR]
# Environment: SEMITHIN (a built binary; default: cargo build --release -p semithin),
#              PACKAGES (default "hello", which the fixture mirror holds), RUNS (default 2).
# Writes its section of bench/RESULTS.md (replacing the previous one) and prints it.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/common.sh
. "$SCRIPT_DIR/common.sh"
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
RESULTS=$SCRIPT_DIR/RESULTS.md
PACKAGES=${PACKAGES:-hello}
RUNS=${RUNS:-2}

say() { printf 'image-build: %s\n' "$*" >&2; }
die() {
  printf 'image-build: error: %s\n' "$*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "must be run as root (mmdebstrap and debootstrap in root mode)"
for t in mmdebstrap debootstrap python3 /usr/bin/time; do
  command -v "$t" >/dev/null || die "$t is not installed"
done

W=${1:-$(mktemp -d /var/tmp/semithin-image-bench.XXXXXX)}
mkdir -p "$W"
W=$(cd "$W" && pwd)
HTTP_PID=
cleanup() {
  [ -n "$HTTP_PID" ] && kill "$HTTP_PID" 2>/dev/null
  for d in "$W"/mm-* "$W"/ds-* "$W"/repo-*; do
    [ -e "$d" ] && rm -rf --one-file-system "$d"
  done
  return 0
}
trap cleanup EXIT

if [ -z "${SEMITHIN:-}" ]; then
  say "building semithin (cargo build --release -p semithin)"
  (cd "$ROOT" && cargo build --release -p semithin >&2)
  SEMITHIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/semithin
fi
[ -x "$SEMITHIN" ] || die "no semithin binary at $SEMITHIN"

serve_mirror "$ROOT"

list=$(printf '"%s", ' $PACKAGES)
cat >"$W/profile.toml" <<EOF
channel = "bench/image"
suite = "bookworm"
mirror = "$URL"
mirror_key = "$MIRROR_DIR/key.asc"
packages = [${list%, }]
EOF
export SOURCE_DATE_EPOCH=1700000000
comma=$(echo $PACKAGES | tr ' ' ',')

# run NAME N COMMAND...: one timed run; records "NAME N seconds packages"
ROWS=()
count() { chroot "$1" dpkg-query -W -f='${db:Status-Abbrev}\n' | grep -c '^ii'; }
run() {
  local name=$1 n=$2
  shift 2
  say "$name, run $n"
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$W/log" 2>&1 || {
    tail -20 "$W/log" >&2
    die "$name failed"
  }
  t1=$(date +%s.%N)
  ROWS+=("$name|$n|$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')")
}

for n in $(seq "$RUNS"); do
  rm -rf "$W/repo-$n"
  "$SEMITHIN" repo init "$W/repo-$n" >/dev/null
  run "semithin image build" "$n" "$SEMITHIN" --repo "$W/repo-$n" image build "$W/profile.toml" --work-dir "$W"
  SEMI_PKGS=$("$SEMITHIN" --repo "$W/repo-$n" image packages bench/image | wc -l)
  SEMI_TREE=$("$SEMITHIN" --repo "$W/repo-$n" show bench/image --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["tree"])')
  rm -rf "$W/repo-$n"

  run "mmdebstrap" "$n" mmdebstrap --mode=root --variant=minbase --include="$comma" bookworm "$W/mm-$n" \
    "deb [signed-by=$MIRROR_DIR/key.asc] $URL bookworm main"
  MM_PKGS=$(count "$W/mm-$n")
  rm -rf --one-file-system "$W/mm-$n"

  run "debootstrap" "$n" debootstrap --variant=minbase --include="$comma" --keyring="$MIRROR_DIR/key.gpg" \
    bookworm "$W/ds-$n" "$URL"
  DS_PKGS=$(count "$W/ds-$n")
  rm -rf --one-file-system "$W/ds-$n"
done

best() { printf '%s\n' "${ROWS[@]}" | awk -F'|' -v n="$1" '$1 == n { if (b == "" || $3 < b) b = $3 } END { print b }'; }
SB=$(best "semithin image build")

OUT=$W/section.md
{
  echo "# semithin image build benchmark: a profile against plain mmdebstrap and debootstrap"
  echo
  echo "Written by \`bench/image-build.sh\` (see its header); each run replaces this part."
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M') UTC — \`bench/image-build.sh\`"
  echo
  echo "- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "- $("$SEMITHIN" --version), $(mmdebstrap --version), debootstrap $(dpkg-query -W -f='${Version}' debootstrap)"
  echo "- the same list: minbase bookworm + \`$PACKAGES\`, from the fixture mirror ($(ls "$MIRROR_DIR/debian/pool/main" | wc -l) .debs) on loopback; SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH"
  echo "- installed packages in the result: semithin $SEMI_PKGS, mmdebstrap $MM_PKGS, debootstrap $DS_PKGS; semithin's tree \`${SEMI_TREE:0:16}\`"
  echo "- $RUNS runs each, interleaved; wall seconds; ratio = the tool's best run / semithin's best"
  echo
  echo "| tool | run | wall s | best / semithin best |"
  echo "| --- | ---: | ---: | ---: |"
  for r in "${ROWS[@]}"; do
    IFS='|' read -r name n secs <<<"$r"
    printf '| %s | %s | %.1f | %s |\n' "$name" "$n" "$secs" \
      "$( [ "$n" = 1 ] && awk -v a="$(best "$name")" -v b="$SB" 'BEGIN { printf "%.2f", a / b }')"
  done
  echo
  echo "semithin's build is mmdebstrap's plus a second apt pass in a chroot (the sources written as"
  echo "deb822 with their keys, apt-get update, the packages installed on their own so a failure names"
  echo "them), the cleaning and clamping of times, and the commit into the repository. A different"
  echo "package count means a tool chose another set for \"minbase\" (debootstrap's own selection of"
  echo "the required packages is smaller than mmdebstrap's): its tree is smaller by that much. The"
  echo "machine is shared, so runs of one tool vary; compare the best runs."
} >"$OUT"
cat "$OUT"
replace_section "$RESULTS" "$OUT" "# semithin image build benchmark" "$W"
say "bench/RESULTS.md updated"
