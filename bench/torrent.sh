#!/usr/bin/env bash
# BitTorrent benchmark (issue 14): AGENTS agents on one site (real `semithin agent` daemons,
# each its own process and BitTorrent client) update v1 -> v2 whose delta pack is MIB MiB of new
# content, once through the swarm (`serve --torrent`, agents `--torrent`) and once over HTTP
# alone, in one run, twice: with the site in a network namespace behind an uplink shaped to
# UPLINK with tc (the case BitTorrent is for: the server's link is the limit), and on loopback
# without any limit. Reported: the bytes the server sent for the pack (its
# seeder's upload plus delta bytes over HTTP) and the time from the publish until every machine
# reports v2. Goals: server bytes <= 2 x the pack for 20 peers; convergence no slower than HTTP.
#
# Usage: bench/torrent.sh            (as root, like the tests; see bench/README.md)
# Environment: AGENTS (20), MIB (8), UPLINK (100mbit), CARGO_TARGET_DIR as for the tests.
#
# The run is the test `torrent::bench_torrent_site_update_with_and_without_the_swarm` (ignored
# in the suite), so the setup is the tests' own: a debug build, the server and agents on
# loopback, the time including the build of the delta pack at publish (the same in both modes).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
RESULTS=bench/RESULTS.md
S=$(mktemp -d)
trap 'rm -rf "$S"' EXIT
AGENTS=${AGENTS:-20}
MIB=${MIB:-8}
UPLINK=${UPLINK:-100mbit}
start=$(date -u '+%Y-%m-%d %H:%M UTC')
BENCH_AGENTS=$AGENTS BENCH_MIB=$MIB BENCH_UPLINK=$UPLINK BENCH_TORRENT_OUT=$S/table.md \
  cargo nextest run -p semithin --test it --run-ignored only --no-capture \
  -E 'test(/bench_torrent_site_update/)' >&2
{
  echo "# semithin BitTorrent benchmark"
  echo
  echo "Written by \`bench/torrent.sh\`; each run replaces this part."
  echo
  echo "## $start — \`AGENTS=$AGENTS MIB=$MIB UPLINK=$UPLINK bench/torrent.sh\`"
  echo
  echo "- machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%d GiB RAM", $2/1048576}' /proc/meminfo), $(uname -sr)"
  echo "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "- semithin: debug build of the tests; the server seeds, the tracker gives its seeder to two downloading machines at a time (the default \`--torrent-peers\`); the time runs from the publish (delta pack built at publish, the same in both modes) until every machine reports v2"
  echo
  cat "$S/table.md"
} >"$S/section.md"
replace_section "$RESULTS" "$S/section.md" "# semithin BitTorrent benchmark" "$S"
cat "$S/section.md"
