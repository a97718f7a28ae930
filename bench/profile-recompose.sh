#!/usr/bin/env bash
# Layered profile recomposition benchmark: after the base image moves (a new version of the base
# channel), how long until the profiles above it are composed again, against rebuilding the
# derived image from nothing with plain mmdebstrap, in one run, from the same local mirror on
# loopback (tests/fixtures/debian-mirror.sh, cached; a Python HTTP server on 127.0.0.1).
#
# Set-up (not timed): a base image (`image build`, minbase bookworm) on bench/base; a file layer
# bench/files (FILES_MB of files under /opt/bench and an /etc file); a package layer bench/tools
# (`image add bench/tools hello` over the base); a second base version on bench/base-next (the
# first with FILES_MB/4 of changed files under /usr/lib/bench and /etc/motd changed: what a
# security update touches).
#
# Timed (each RUNS times, the base moved back and forth with `channel set`, which composes the
# profiles above the moved channel before it returns):
#   semithin, file layers     profile files = base + bench/files: a pure composition of trees
#   semithin, package layer   profile tools = base + bench/tools + bench/files: bench/tools is
#                             replayed (checkout, chroot, apt-get install hello) over the new base
#   mmdebstrap                the derived image rebuilt: mmdebstrap --include=hello, then the
#                             layer's files copied in (what a one-image-per-profile site does)
#
# Usage (as root, from the repository root):  bench/profile-recompose.sh [WORK_DIR]
# Environment: SEMITHIN (a built binary; default: cargo build --release -p semithin),
#              FILES_MB (default 64), RUNS (default 3).
# Writes its section of bench/RESULTS.md (replacing the previous one) and prints it.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/common.sh
. "$SCRIPT_DIR/common.sh"
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
RESULTS=$SCRIPT_DIR/RESULTS.md
FILES_MB=${FILES_MB:-64}
RUNS=${RUNS:-3}

say() { printf 'profile-recompose: %s\n' "$*" >&2; }
die() {
  printf 'profile-recompose: error: %s\n' "$*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "must be run as root (chroots, mmdebstrap in root mode)"
for t in mmdebstrap python3; do
  command -v "$t" >/dev/null || die "$t is not installed"
done

W=${1:-$(mktemp -d /var/tmp/semithin-recompose-bench.XXXXXX)}
mkdir -p "$W"
W=$(cd "$W" && pwd)
HTTP_PID=
cleanup() {
  [ -n "$HTTP_PID" ] && kill "$HTTP_PID" 2>/dev/null
  for d in "$W"/mm-* "$W"/repo "$W"/files "$W"/next; do
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

export SOURCE_DATE_EPOCH=1700000000
S() { "$SEMITHIN" --repo "$W/repo" "$@"; }
rm -rf "$W/repo"
"$SEMITHIN" repo init "$W/repo" >/dev/null
cat >"$W/base.toml" <<EOF
channel = "bench/base"
suite = "bookworm"
mirror = "$URL"
mirror_key = "$MIRROR_DIR/key.asc"
EOF
say "set-up: the base image"
S image build "$W/base.toml" --work-dir "$W" >"$W/log" 2>&1 || { tail -20 "$W/log" >&2; die "image build failed"; }
say "set-up: the file layer ($FILES_MB MiB)"
mkdir -p "$W/files/opt/bench" "$W/files/etc"
echo "lab machines" >"$W/files/etc/motd.lab"
head -c $((FILES_MB * 1024 * 1024)) /dev/urandom | split -b 1M - "$W/files/opt/bench/f"
S commit -c bench/files "$W/files" >/dev/null
say "set-up: the package layer (image add bench/tools hello) and the profiles"
S profile set files --layers bench/base,bench/files >/dev/null 2>&1
S profile compose files >/dev/null 2>&1
S profile set tools --layers bench/base,bench/tools,bench/files >/dev/null 2>&1
S image add bench/tools hello --work-dir "$W" >"$W/log" 2>&1 || { tail -20 "$W/log" >&2; die "image add failed"; }
say "set-up: the next base version"
S checkout bench/base "$W/next" >/dev/null
mkdir -p "$W/next/usr/lib/bench"
head -c $((FILES_MB * 1024 * 1024 / 4)) /dev/urandom | split -b 1M - "$W/next/usr/lib/bench/lib"
echo "updated" >>"$W/next/etc/motd"
V0=$(S show bench/base --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["commit"])')
# next N: a new base version (the update, and a line of its own so each is new to the layers)
next() {
  echo "update $1" >"$W/next/etc/bench-update"
  S commit -c "bench/base-next" --new-channel "$W/next" >/dev/null 2>&1
  S show bench/base-next --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["commit"])'
}

ROWS=()
timed() {
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

# One profile at a time above the base, so each move composes just it; each run moves the base
# from where it is to a version no layer was made over.
cur=$V0
for n in $(seq "$RUNS"); do
  to=$(next "$n")
  mv "$W/repo/profiles/tools.toml" "$W/tools.toml"
  timed "semithin, file layers" "$n" S channel set bench/base "$to"
  S channel set bench/base "$cur" >/dev/null 2>&1
  mv "$W/tools.toml" "$W/repo/profiles/tools.toml"
  mv "$W/repo/profiles/files.toml" "$W/files.toml"
  timed "semithin, package layer replayed" "$n" S channel set bench/base "$to"
  grep -q "replayed: bench/tools" "$W/log" || { cat "$W/log" >&2; die "the package layer was not replayed"; }
  mv "$W/files.toml" "$W/repo/profiles/files.toml"
  S profile compose files >/dev/null 2>&1
  cur=$to
  timed "mmdebstrap rebuild" "$n" bash -c "mmdebstrap --mode=root --variant=minbase --include=hello bookworm '$W/mm-$n' 'deb [signed-by=$MIRROR_DIR/key.asc] $URL bookworm main' && cp -a '$W/files/.' '$W/mm-$n/'"
  rm -rf --one-file-system "$W/mm-$n"
done
FILES_STATE=$(S profile list --json | python3 -c 'import json,sys; print(" ".join(r["name"]+"="+r["state"] for r in json.load(sys.stdin)))')

best() { printf '%s\n' "${ROWS[@]}" | awk -F'|' -v n="$1" '$1 == n { if (b == "" || $3 < b) b = $3 } END { print b }'; }
MB=$(best "mmdebstrap rebuild")

OUT=$W/section.md
{
  echo "# semithin layered profiles: recomposition after a base update, against a rebuild"
  echo
  echo "Written by \`bench/profile-recompose.sh\` (see its header); each run replaces this part."
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M') UTC — \`bench/profile-recompose.sh\`"
  echo
  echo "- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "- $("$SEMITHIN" --version), $(mmdebstrap --version)"
  echo "- base: minbase bookworm from the fixture mirror on loopback; file layer: $FILES_MB MiB; package layer: hello; base update: $((FILES_MB / 4)) MiB of new files and /etc/motd"
  echo "- $RUNS runs each, interleaved; wall seconds of the whole command; ratio = mmdebstrap's best / the row's best (how many times faster than a rebuild)"
  echo "- after the runs: $FILES_STATE"
  echo
  echo "| what | run | wall s | rebuild best / this best |"
  echo "| --- | ---: | ---: | ---: |"
  for r in "${ROWS[@]}"; do
    IFS='|' read -r name n secs <<<"$r"
    printf '| %s | %s | %.2f | %s |\n' "$name" "$n" "$secs" \
      "$( [ "$n" = 1 ] && awk -v a="$MB" -v b="$(best "$name")" 'BEGIN { printf "%.1f", a / b }')"
  done
  echo
  echo "A file layer over a new base is a composition of stored trees: only the directories on the"
  echo "paths the layers touch are written again, so its time does not grow with the image. A package"
  echo "layer is installed again by apt over the new base (a checkout, a chroot, apt-get install, the"
  echo "result stored), so dpkg's database stays true; that is most of its time, and still a fraction"
  echo "of rebuilding the derived image from nothing."
} >"$OUT"
cat "$OUT"
replace_section "$RESULTS" "$OUT" "# semithin layered profiles: recomposition" "$W"
say "bench/RESULTS.md updated"
