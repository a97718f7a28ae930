#!/usr/bin/env bash
# Fuzzing benchmark: every cargo-fuzz target of fuzz/ for a long time each (default 10 minutes),
# one after another, through fuzz/run.sh, with a corpus that is kept and grows from run to run.
# The goal (issue "Standing tools"): no crash, hang or out-of-memory in 10 minutes per target.
#
# Usage: bench/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Environment:
#   FUZZ_CORPUS_DIR  the kept corpus (default /var/cache/semithin-fuzz/corpus)
#   FUZZ_TARGET_DIR  where the fuzz crate is built (default $CARGO_TARGET_DIR/fuzz, else
#                    target/fuzz)
#   NICE             run under `nice -n NICE` (default 19: a long run should not slow others)
#
# Prints a markdown section for bench/RESULTS.md (targets, seconds, executions, corpus size,
# coverage, result); the exit status is non-zero when any target failed (fuzz/run.sh keeps
# the reproducing input and prints where).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
export FUZZ_CORPUS_DIR=${FUZZ_CORPUS_DIR:-/var/cache/semithin-fuzz/corpus}
mkdir -p "$FUZZ_CORPUS_DIR"
report=$(mktemp)
trap 'rm -f "$report"' EXIT
export FUZZ_REPORT=$report
started=$(date -u '+%Y-%m-%d %H:%M UTC')
status=0
nice -n "${NICE:-19}" fuzz/run.sh "$secs" "$@" || status=$?

cores=$(nproc)
cat <<MD

## $started — fuzz: \`bench/fuzz.sh $secs${*:+ $*}\`

$(rustc +nightly -V), cargo-fuzz $(cargo fuzz --version | awk '{print $2}'), libFuzzer without
a sanitizer (see fuzz/run.sh), debug assertions on; one target at a time on $cores cores shared with other
work (nice ${NICE:-19}); the corpus in \`FUZZ_CORPUS_DIR\` grows over runs.

| target | seconds | executions | exec/s | corpus | coverage | result |
| --- | ---: | ---: | ---: | ---: | ---: | --- |
$(awk -F'\t' '{ eps = ($2 > 0 && $3 ~ /^[0-9]+$/) ? int($3 / $2) : "?"; printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, eps, $4, $5, $6 }' "$report")
MD
exit $status
