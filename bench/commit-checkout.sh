#!/usr/bin/env bash
# Store benchmark: commit and checkout of real Debian root filesystems, semithin side by side
# with casync, OSTree (archive repo) and tar | zstd -19, all in one run.
#
# Usage: bench/commit-checkout.sh [SHARED_BENCH_DIR]      (as root; see bench/README.md)
#
#   SHARED_BENCH_DIR  the shared benchmark scripts with make-trees.sh
#                     (default: $SHARED_BENCH, else <this repo>/../shared/bench)
# Environment:
#   BENCH_DIR      where the trees are (built by make-trees.sh if missing) and where the work
#                  dirs go (default /tmp/semithin-bench)
#   SEMITHIN       a semithin binary to use instead of `cargo build --release -p semithin`
#   WAIT_IDLE_MAX  seconds to wait for other processes' CPU load to end before each
#                  measurement (default 60; 0 = do not wait)
#
# Prints a markdown report on stdout and writes it to bench/RESULTS.md (replacing its own part;
# the sections of other benchmarks, from "# semithin fleet benchmark" on, are kept).
# All work dirs are removed at the end.
set -euo pipefail

# the exact command line, for the report (paths as given, env overrides first)
CMDLINE=
for var in BENCH_DIR SHARED_BENCH SEMITHIN WAIT_IDLE_MAX; do
  if [ -n "${!var:-}" ]; then CMDLINE+="$var=$(printf '%q' "${!var}") "; fi
done
CMDLINE+=$(printf '%q' "$0")
for a in "$@"; do CMDLINE+=" $(printf '%q' "$a")"; done

die() {
  printf 'commit-checkout: error: %s\n' "$*" >&2
  exit 1
}
say() { printf '== %s\n' "$*" >&2; }

[ $# -le 1 ] || die "usage: $0 [SHARED_BENCH_DIR]"
[ "$(id -u)" -eq 0 ] || die "must be run as root (the trees keep real owners and device nodes)"

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
SHARED=${1:-${SHARED_BENCH:-$SCRIPT_DIR/../../shared/bench}}
[ -f "$SHARED/make-trees.sh" ] || die "no make-trees.sh in $SHARED (pass the shared bench dir as argument or SHARED_BENCH)"
SHARED=$(cd "$SHARED" && pwd)
B=${BENCH_DIR:-/tmp/semithin-bench}
RESULTS=$SCRIPT_DIR/RESULTS.md
WAIT_IDLE_MAX=${WAIT_IDLE_MAX:-60}

for tool in casync ostree zstd tar du /usr/bin/time awk sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install casync ostree zstd time)"
done

# --- semithin binary ---------------------------------------------------------------------------
if [ -n "${SEMITHIN:-}" ]; then
  BIN=$(realpath -e "$SEMITHIN") || die "SEMITHIN=$SEMITHIN does not exist"
  BIN_ORIGIN="prebuilt binary given in SEMITHIN"
else
  say "cargo build --release -p semithin"
  (cd "$REPO_ROOT" && cargo build --release -p semithin >&2)
  BIN=$(cd "$REPO_ROOT" && realpath -e "${CARGO_TARGET_DIR:-target}/release/semithin")
  BIN_ORIGIN="built by this run from $(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo 'an unknown revision')"
fi
[ -x "$BIN" ] || die "$BIN is not executable"

# --- trees -------------------------------------------------------------------------------------
say "trees: $SHARED/make-trees.sh $B (skips finished steps)"
bash "$SHARED/make-trees.sh" "$B" >&2
for v in v1 v2 v3; do
  [ -d "$B/trees/$v" ] || die "tree $B/trees/$v is missing after make-trees.sh"
done
[ -f "$B/v3.tar" ] || die "$B/v3.tar is missing after make-trees.sh"

W=$(mktemp -d "$B/commit-checkout.XXXXXX")
trap 'rm -rf "$W"' EXIT
LOGS=$W/logs
mkdir -p "$LOGS" "$W/co"
FAILED=()

# --- measuring ---------------------------------------------------------------------------------
# busy and total jiffies of the whole machine so far
cpu_jiffies() {
  local _c u n s i io irq sirq st
  read -r _c u n s i io irq sirq st _ </proc/stat
  echo "$((u + n + s + irq + sirq + st)) $((u + n + s + i + io + irq + sirq + st))"
}
# wait until the CPUs are (almost) idle, at most WAIT_IDLE_MAX seconds
wait_idle() {
  local start=$SECONDS b1 t1 b2 t2 pct
  [ "$WAIT_IDLE_MAX" -gt 0 ] || return 0
  while :; do
    read -r b1 t1 < <(cpu_jiffies)
    sleep 1
    read -r b2 t2 < <(cpu_jiffies)
    pct=$((100 * (b2 - b1) / (t2 - t1 > 0 ? t2 - t1 : 1)))
    [ "$pct" -lt 10 ] && break
    if [ $((SECONDS - start)) -ge "$WAIT_IDLE_MAX" ]; then
      say "machine still ${pct}% busy after ${WAIT_IDLE_MAX}s of waiting; measuring anyway"
      break
    fi
  done
}

# measure NAME CMD... : runs CMD with stdout to $LOGS/NAME.out and stderr to $LOGS/NAME.err.
# Sets T (wall seconds), M (peak RSS KiB, largest single process), NOTE ("" or how much CPU
# other processes used meanwhile). Returns CMD's exit status.
measure() {
  local name=$1 tf=$W/time.tmp rc=0 b1 t1 b2 t2 u s own other
  shift
  wait_idle
  read -r b1 t1 < <(cpu_jiffies)
  /usr/bin/time -f '%e %M %U %S' -o "$tf" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err" || rc=$?
  read -r b2 t2 < <(cpu_jiffies)
  read -r T M u s < <(tail -n 1 "$tf")
  own=$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%d", (u + s) * 100 }')
  other=$((b2 - b1 - own))
  NOTE=
  if [ "$other" -gt 50 ] && [ "$other" -gt "$(awk -v t="$T" 'BEGIN { printf "%d", t * 30 }')" ]; then
    NOTE="other processes used $(awk -v o="$other" 'BEGIN { printf "%.1f", o / 100 }') CPU-s meanwhile"
  fi
  if [ "$rc" -ne 0 ]; then
    printf 'commit-checkout: FAILED (exit %s): %s\n' "$rc" "$*" >&2
    tail -n 20 "$LOGS/$name.err" >&2
  fi
  return "$rc"
}

# a failing semithin command ends the benchmark with its exact error
semithin_failed() {
  printf '\ncommit-checkout: semithin failed in step "%s"; its stderr:\n' "$1" >&2
  cat "$LOGS/$1.err" >&2
  exit 1
}

bytes() { du -sb "$1" | cut -f1; }
disk() { du -s -B1 "$1" | cut -f1; }
# field of the flat JSON object semithin commit --json prints
json_field() {
  grep -o "\"$2\"[[:space:]]*:[[:space:]]*\"\{0,1\}[^,}\"]*" "$1" | head -n 1 | sed 's/^[^:]*:[[:space:]]*"\{0,1\}//'
}
# sorted tar stream of a tree: names, types, modes, owners, sizes, contents, link targets,
# hardlinks, device numbers (mtimes and xattrs are left out). Extra tar options may follow.
tar_stream() {
  local d=$1
  shift
  tar --sort=name --mtime='2024-01-01 00:00:00Z' --numeric-owner --format=gnu "$@" -C "$d" -cf - .
}
fingerprint() { tar_stream "$@" | sha256sum | cut -c1-16; }
# number of paths stored as hardlinks to an earlier path
hardlinked() { tar_stream "$1" | tar -tvf - | grep -c '^h' || true; }
listing() {
  (cd "$1" && find . \( -type d -printf '%p %M %U:%G\n' \) -o -printf '%p %M %U:%G %s %l\n' | sort)
}

# --- commits -----------------------------------------------------------------------------------
TOOLS=(semithin casync ostree tarzst)
declare -A TOOL_NAME=(
  [semithin]="semithin commit"
  [casync]="casync make"
  [ostree]="ostree commit (archive)"
  [tarzst]="tar \| zstd -19 -T0"
)
declare -A CT CM CS CG CD CNOTE J_COMMIT J_FILES J_NEW J_STORED J_SHARED

"$BIN" repo init "$W/semithin" >"$LOGS/semithin-init.out" 2>"$LOGS/semithin-init.err" ||
  semithin_failed semithin-init
mkdir -p "$W/casync/store" "$W/tarzst"
ostree --repo="$W/ostree" init --mode=archive
# ostree refuses device nodes ("Not a regular file or symlink"): skip /dev as the peers' run does
printf '/dev\n' >"$W/ostree-skip.txt"

prev_size() { # prev_size TOOL VERSION -> store size before this version's commit
  case $2 in
    v1) echo 0 ;;
    v2) echo "${CS[$1,v1]:-}" ;;
    v3) echo "${CS[$1,v2]:-}" ;;
  esac
}

for v in v1 v2 v3; do
  tree=$B/trees/$v
  say "commit $v"

  measure "semithin-commit-$v" "$BIN" --repo "$W/semithin" commit --channel bench -m "$v" --json "$tree" ||
    semithin_failed "semithin-commit-$v"
  CT[semithin,$v]=$T CM[semithin,$v]=$M CNOTE[semithin,$v]=$NOTE
  CS[semithin,$v]=$(bytes "$W/semithin") CD[semithin,$v]=$(disk "$W/semithin")
  f=$LOGS/semithin-commit-$v.out
  J_COMMIT[$v]=$(json_field "$f" commit) J_FILES[$v]=$(json_field "$f" files)
  J_NEW[$v]=$(json_field "$f" new_bytes) J_STORED[$v]=$(json_field "$f" stored_bytes)
  J_SHARED[$v]=$(json_field "$f" shared_bytes)

  if measure "casync-make-$v" casync make --store="$W/casync/store" "$W/casync/$v.caidx" "$tree"; then
    CT[casync,$v]=$T CM[casync,$v]=$M CNOTE[casync,$v]=$NOTE
    CS[casync,$v]=$(bytes "$W/casync") CD[casync,$v]=$(disk "$W/casync")
  else
    FAILED+=("casync make $v")
  fi

  if measure "ostree-commit-$v" ostree --repo="$W/ostree" commit --branch=bench --subject="$v" \
    --skip-list="$W/ostree-skip.txt" --tree=dir="$tree"; then
    CT[ostree,$v]=$T CM[ostree,$v]=$M CNOTE[ostree,$v]=$NOTE
    CS[ostree,$v]=$(bytes "$W/ostree") CD[ostree,$v]=$(disk "$W/ostree")
  else
    FAILED+=("ostree commit $v")
  fi

  # shellcheck disable=SC2016 # expanded by the inner shell
  if measure "tarzst-$v" bash -c 'set -o pipefail; tar -C "$1" -cf - . | zstd -19 -T0 -q -o "$2"' \
    _ "$tree" "$W/tarzst/$v.tar.zst"; then
    CT[tarzst,$v]=$T CM[tarzst,$v]=$M CNOTE[tarzst,$v]=$NOTE
    CS[tarzst,$v]=$(bytes "$W/tarzst") CD[tarzst,$v]=$(disk "$W/tarzst")
  else
    FAILED+=("tar | zstd $v")
  fi

  for tool in "${TOOLS[@]}"; do
    if [ -n "${CS[$tool,$v]:-}" ] && { [ "$v" = v1 ] || [ -n "$(prev_size "$tool" "$v")" ]; }; then
      CG[$tool,$v]=$((CS[$tool,$v] - $(prev_size "$tool" "$v")))
    fi
  done
done

# --- checkouts of v3 ---------------------------------------------------------------------------
# Caches cannot be dropped reliably here, so every checkout goes into a fresh directory, once as
# a warm-up and then once measured.
declare -A KT KM KNOTE KVERIFY
KROWS=()
# verify_semithin DIR TREE -> a note on how the checkout DIR compares to TREE ("DIFFERENT" in it
# if it does not match). A checkout with --cache hardlinks equal files to one cached inode, so
# it may have more hardlinks than the tree: then it is compared with hardlinks dereferenced.
verify_semithin() {
  local dir=$1 tree=$2 extra
  if [ "$(fingerprint "$dir")" = "$(fingerprint "$tree")" ]; then
    echo "identical to $(basename "$tree")"
  elif [ "$(fingerprint "$dir" --hard-dereference)" = "$(fingerprint "$tree" --hard-dereference)" ]; then
    extra=$(($(hardlinked "$dir") - $(hardlinked "$tree")))
    echo "identical to $(basename "$tree") except hardlinks: $extra more paths share an inode with another path of the checkout"
  else
    printf 'commit-checkout: semithin checkout %s differs from %s; first differences:\n' "$dir" "$tree" >&2
    diff <(listing "$tree") <(listing "$dir") | head -n 20 >&2 || true
    echo "DIFFERENT from $(basename "$tree") (beyond hardlinks)"
  fi
}
# checkout_row KEY LABEL WARMUP(yes|no) CMD... (CMD's last argument is the destination dir;
# the measured run goes there, the warm-up into DEST.warm which is removed at once)
checkout_row() {
  local key=$1 label=$2 warm=$3
  shift 3
  local args=("$@") dest=${*: -1}
  if [ "$warm" = yes ]; then
    args[${#args[@]} - 1]=$dest.warm
    say "checkout warm-up: $label"
    if ! "${args[@]}" >"$LOGS/$key-warm.out" 2>"$LOGS/$key-warm.err"; then
      printf 'commit-checkout: FAILED (warm-up): %s\n' "${args[*]}" >&2
      tail -n 20 "$LOGS/$key-warm.err" >&2
      return 1
    fi
    rm -rf "$dest.warm"
  fi
  say "checkout: $label"
  measure "$key" "$@" || return 1
  KROWS+=("$key")
  KT[$key]=$T KM[$key]=$M KNOTE[$key]=$NOTE
  TOOL_NAME[$key]=$label
}

checkout_row semithin-co "semithin checkout" yes \
  "$BIN" --repo "$W/semithin" checkout bench "$W/co/semithin" || semithin_failed semithin-co
KVERIFY[semithin-co]=$(verify_semithin "$W/co/semithin" "$B/trees/v3")
rm -rf "$W/co/semithin"

# the shared-cache case: v2 was checked out with --cache before, v3 reuses its unchanged files
checkout_row semithin-cache-v2 "semithin checkout --cache of v2 first (fills the cache)" no \
  "$BIN" --repo "$W/semithin" checkout --cache 'bench~1' "$W/co/semithin-cache-v2" ||
  semithin_failed semithin-cache-v2
checkout_row semithin-cache "semithin checkout --cache of v3 after v2" no \
  "$BIN" --repo "$W/semithin" checkout --cache bench "$W/co/semithin-cache-v3" ||
  semithin_failed semithin-cache
KVERIFY[semithin-cache-v2]=$(verify_semithin "$W/co/semithin-cache-v2" "$B/trees/v2")
KVERIFY[semithin-cache]=$(verify_semithin "$W/co/semithin-cache-v3" "$B/trees/v3")
checkout_row semithin-cache-again "semithin checkout --cache of v3 again (all in the cache)" no \
  "$BIN" --repo "$W/semithin" checkout --cache bench "$W/co/semithin-cache-v3b" ||
  semithin_failed semithin-cache-again
KVERIFY[semithin-cache-again]=$(verify_semithin "$W/co/semithin-cache-v3b" "$B/trees/v3")
rm -rf "$W/co"/semithin-cache-*

if [ -e "$W/casync/v3.caidx" ]; then
  checkout_row casync-extract "casync extract" yes \
    casync extract --store="$W/casync/store" "$W/casync/v3.caidx" "$W/co/casync" ||
    FAILED+=("casync extract")
  rm -rf "$W/co/casync"
fi
if [ -n "${CS[ostree,v3]:-}" ]; then
  checkout_row ostree-checkout "ostree checkout (archive repo: decompresses)" yes \
    ostree --repo="$W/ostree" checkout bench "$W/co/ostree" || FAILED+=("ostree checkout")
  rm -rf "$W/co/ostree"
fi
# tar needs an existing destination directory; the warm-up uses a second one
mkdir -p "$W/co/tar" "$W/co/tar.warm"
checkout_row tar-x "tar -xf v3.tar (uncompressed)" yes \
  tar -xf "$B/v3.tar" -C "$W/co/tar" || FAILED+=("tar -xf")
rm -rf "$W/co/tar" "$W/co/tar.warm"

# --- report ------------------------------------------------------------------------------------
commas() { sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|[^0-9]\)/\1,\2\3/' -e 'ta' <<<"$1"; }
mib() { [ -n "$1" ] && awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
cell() { if [ -n "$1" ]; then commas "$1"; else echo "failed"; fi; }

report() {
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — \`$CMDLINE\`"
  echo
  echo "- machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r), $(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)"
  echo "- semithin: $("$BIN" --version 2>/dev/null | head -n 1 || echo 'no --version'); $BIN_ORIGIN"
  echo "- peers: $(casync --version | head -n 1), ostree $(ostree --version | sed -n "s/^ *Version: '\(.*\)'/\1/p"), $(zstd --version | sed 's/^\*\** *//; s/,.*//'), $(tar --version | head -n 1)"
  echo "- trees (from make-trees.sh): $(for v in v1 v2 v3; do printf '%s %s B / %s files; ' "$v" "$(commas "$(bytes "$B/trees/$v")")" "$(commas "$(find "$B/trees/$v" -type f | wc -l)")"; done | sed 's/; $//')"
  echo "- one run, all tools side by side; each number measured once (\`/usr/bin/time -f '%e %M'\`): compare within this run only"
  echo
  echo "### Commit (each version into one store per tool)"
  echo
  echo "| version | tool | wall s | peak RSS MiB | store after (du -sb) | growth | on disk (du -s) | time / semithin | RSS / semithin | store / semithin | growth / semithin | note |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  local v tool
  for v in v1 v2 v3; do
    for tool in "${TOOLS[@]}"; do
      echo "| $v | ${TOOL_NAME[$tool]} | $(cell "${CT[$tool,$v]:-}") | $(mib "${CM[$tool,$v]:-}") | $(cell "${CS[$tool,$v]:-}") | $(cell "${CG[$tool,$v]:-}") | $(cell "${CD[$tool,$v]:-}") | $(ratio "${CT[$tool,$v]:-}" "${CT[semithin,$v]}") | $(ratio "${CM[$tool,$v]:-}" "${CM[semithin,$v]}") | $(ratio "${CS[$tool,$v]:-}" "${CS[semithin,$v]}") | $(ratio "${CG[$tool,$v]:-}" "${CG[semithin,$v]}") | ${CNOTE[$tool,$v]:-} |"
    done
  done
  echo
  echo "semithin's own report (\`commit --json\`):"
  echo
  echo "| version | commit | files | new_bytes | stored_bytes | shared_bytes |"
  echo "| --- | --- | ---: | ---: | ---: | ---: |"
  for v in v1 v2 v3; do
    echo "| $v | \`${J_COMMIT[$v]:0:16}\` | $(commas "${J_FILES[$v]}") | $(commas "${J_NEW[$v]}") | $(commas "${J_STORED[$v]}") | $(commas "${J_SHARED[$v]}") |"
  done
  echo
  echo "### Checkout of v3 into a fresh directory"
  echo
  echo "Page cache not dropped (not reliably possible here): each checkout ran once as a warm-up into"
  echo "a fresh directory, then was measured once into another fresh one. The \`--cache\` rows run in"
  echo "sequence without a separate warm-up: v2 first, then v3 (reusing v2's files), then v3 again."
  echo
  echo "| tool | wall s | peak RSS MiB | time / semithin | RSS / semithin | note |"
  echo "| --- | ---: | ---: | ---: | ---: | --- |"
  local k n
  for k in "${KROWS[@]}"; do
    n=${KNOTE[$k]:-}
    if [ -n "${KVERIFY[$k]:-}" ]; then n="result ${KVERIFY[$k]}${n:+; $n}"; fi
    echo "| ${TOOL_NAME[$k]} | ${KT[$k]} | $(mib "${KM[$k]}") | $(ratio "${KT[$k]}" "${KT[semithin-co]}") | $(ratio "${KM[$k]}" "${KM[semithin-co]}") | $n |"
  done
  echo
  echo "Notes: store sizes include everything a tool needs to restore all versions (casync: chunk"
  echo "store + .caidx files; tar: all .tar.zst files so far). ostree skips /dev (it refuses device"
  echo "nodes). The tar | zstd RSS is that of its largest process (zstd). \"result identical\" means the"
  echo "checkout has the same names, types, modes, owners, contents, link targets, hardlinks and device"
  echo "numbers as the tree (mtimes and xattrs not compared); \"except hardlinks\": the same with"
  echo "hardlinks dereferenced, but files that are separate in the tree share an inode in the checkout"
  echo "(\`checkout --cache\` links every file to its cached copy, so equal files end up linked together)."
  if [ ${#FAILED[@]} -gt 0 ]; then
    echo
    echo "**Failed:** ${FAILED[*]}"
  fi
}

say "writing the report"
{
  echo "# semithin store benchmark: commit and checkout"
  echo
  echo "Written by \`bench/commit-checkout.sh\` (see bench/README.md); each run replaces this part."
  echo
  report
} >"$W/RESULTS.md"
cat "$W/RESULTS.md"
# the other benchmarks' sections stay (bench/fleet.sh's, pasted by hand)
if [ -f "$RESULTS" ] && grep -q '^# semithin fleet benchmark' "$RESULTS"; then
  echo >>"$W/RESULTS.md"
  sed -n '/^# semithin fleet benchmark/,$p' "$RESULTS" >>"$W/RESULTS.md"
fi
cp "$W/RESULTS.md" "$RESULTS"

if [ ${#FAILED[@]} -gt 0 ]; then
  die "failed: ${FAILED[*]}"
fi
if printf '%s\n' "${KVERIFY[@]}" | grep -q DIFFERENT; then
  die "a semithin checkout differs from the committed tree (see above)"
fi
