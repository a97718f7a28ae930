#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (or the ones named) for SECONDS each and fails if any of them
# finds a crash, a failed assertion, an overflow, an input slower than FUZZ_TIMEOUT seconds or one
# that needs more than 2 GiB. test.sh runs it with a short budget; bench/fuzz.sh with a long one.
#
# Usage: fuzz/run.sh SECONDS [TARGET...]
#
# Environment:
#   FUZZ_TARGET_DIR  where the fuzz crate is built (default $CARGO_TARGET_DIR/fuzz, else
#                    target/fuzz): keep it outside the clone in CI so the build is cached
#   FUZZ_CORPUS_DIR  a corpus directory to keep and grow across runs (one subdirectory per
#                    target); default: a temporary one, removed at the end
#   FUZZ_TIMEOUT     seconds one input may take (default 20)
#   FUZZ_REPORT      a file to append one tab-separated line per target to
#
# Each target starts from its generated seeds (its `init` writes them when SEMITHIN_FUZZ_SEEDS
# is set) plus the checked-in samples under fuzz/seeds/TARGET/. On a failure the reproducing
# input is kept and its path printed: `FUZZ_TARGET_DIR/.../TARGET INPUT` runs it again.
set -euo pipefail
cd "$(dirname "$0")"
fuzz_dir=$(pwd)

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
}
[ $# -ge 1 ] || usage
secs=$1
shift
[[ $secs =~ ^[0-9]+$ ]] && [ "$secs" -gt 0 ] || usage

command -v cargo >/dev/null || { echo "fuzz/run.sh: cargo is not installed" >&2; exit 1; }
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz/run.sh: installing cargo-fuzz (cargo install --locked cargo-fuzz)" >&2
  cargo install --locked cargo-fuzz
fi

target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$fuzz_dir/../target}/fuzz}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

echo "fuzz/run.sh: building ${#targets[@]} targets in $target_dir" >&2
# Without AddressSanitizer: the workspace forbids unsafe code, and cc-rs would build the C
# libraries (zstd, SQLite, xz, zlib) with gcc's instrumentation against LLVM's runtime, which
# reports false errors (in zstd_opt.c at compression level 16 and up, and SQLite's statics).
# Panics, failed assertions, overflows (debug assertions), hangs and memory use still count.
(cd .. && cargo +nightly fuzz build --sanitizer none --target-dir "$target_dir" >&2)
host=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$host/release

work=$(mktemp -d "${TMPDIR:-/tmp}/semithin-fuzz.XXXXXX")
keep_work=
# The targets' scratch repositories (and the fixtures they hold for a whole run), in memory
# when /dev/shm exists; removed at the end whatever happened.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  scratch=$(mktemp -d /dev/shm/semithin-fuzz-run.XXXXXX)
else
  scratch=$work/scratch
  mkdir -p "$scratch"
fi
export SEMITHIN_FUZZ_SCRATCH=$scratch
cleanup() {
  rm -rf "$scratch"
  [ -n "$keep_work" ] || rm -rf "$work"
}
trap cleanup EXIT
corpus_root=${FUZZ_CORPUS_DIR:-$work/corpus}

failed=()
printf '%-16s %8s %10s %8s %6s  %s\n' target seconds runs corpus cov result >&2
for t in "${targets[@]}"; do
  bin=$bin_dir/$t
  [ -x "$bin" ] || { echo "fuzz/run.sh: no fuzz target $t ($bin)" >&2; exit 1; }
  corpus=$corpus_root/$t
  mkdir -p "$corpus" "$work/artifacts/$t"
  if [ -d "$fuzz_dir/seeds/$t" ]; then
    cp -n "$fuzz_dir/seeds/$t"/* "$corpus"/ 2>/dev/null || true
  fi
  log=$work/$t.log
  start=$SECONDS
  status=0
  SEMITHIN_FUZZ_SEEDS=$corpus "$bin" "$corpus" \
    -max_total_time="$secs" -timeout="${FUZZ_TIMEOUT:-20}" -rss_limit_mb=2048 \
    -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || status=$?
  took=$((SECONDS - start))
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2 || true)
  files=$(find "$corpus" -type f | wc -l)
  if [ "$status" -eq 0 ]; then
    result=ok
  else
    result="FAILED (exit $status)"
    failed+=("$t")
  fi
  printf '%-16s %8s %10s %8s %6s  %s\n' "$t" "$took" "${runs:-?}" "$files" "${cov:-?}" "$result" >&2
  if [ -n "${FUZZ_REPORT:-}" ]; then
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$took" "${runs:-?}" "$files" "${cov:-?}" "$result" >>"$FUZZ_REPORT"
  fi
  if [ "$status" -ne 0 ]; then
    keep_work=1
    echo "---- $t: the end of its log ($log)" >&2
    tail -40 "$log" >&2
    input=$(find "$work/artifacts/$t" -type f | head -1)
    echo "---- reproduce with: $bin ${input:-INPUT}" >&2
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz/run.sh: ${#failed[@]} target(s) failed: ${failed[*]} (logs and inputs kept in $work)" >&2
  exit 1
fi
echo "fuzz/run.sh: ${#targets[@]} targets, ${secs} s each, no failure" >&2
