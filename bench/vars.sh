#!/usr/bin/env bash
# Per-machine configuration benchmark: how long a variable change takes to reach 1,000 agents,
# from the admin's signed set stored on the server to each machine's configuration file
# rendered anew in its /etc layer.
#
# Usage: bench/vars.sh [--agents N] [--rounds R] [WORK_DIR]
#
#   --agents N   agents (default 1000)
#   --rounds R   variable changes measured (default 5)
#   WORK_DIR     where everything is written (kept afterwards); default a new temporary
#                directory, removed at the end. Nothing is written anywhere else.
# Environment:
#   SEMITHIN, BENCH_VARS   prebuilt `semithin` and `bench_vars` (example) binaries instead of
#                          `cargo build --release -p semithin --bin semithin --example bench_vars`
#
# What runs, all on loopback:
# - `semithin serve` (one process), its repository holding a tiny release on bench/vars that
#   ships one template (/usr/share/semithin/templates: motd.j2 -> /etc/motd, `{{ round }}`),
#   committed and published with the CLI.
# - `bench_vars`: N agents of the agent library (semithin_agent::Agent, the daemon loop
#   `Agent::run`), each in its own thread with its own state directory under WORK_DIR (machine
#   key, repository, deployment, /etc upper layer, config.json), trusting the admin key. They
#   enroll with a preauthorized token, are assigned the channel (`fleet assign '*'`), update,
#   render /etc/motd once, then wait in long polls as real agents do.
# - Each round: a global variable set {round: rN}, signed with the admin key, is stored
#   through the admin API (PUT /api/v1/admin/vars, what `semithin var set` does). The clock
#   starts before that request; an agent counts as reached when its log says it rendered
#   /etc/motd (the set arrived in its long poll's answer, was verified against the admin key,
#   saved atomically, the template rendered and the file written with fsync and rename).
#   After each round every agent's /etc/motd must hold the round's value, or the run fails.
# - Reported: median, p95 and max over every agent of every round, and the time until the
#   last agent of a round had it (the median over rounds).
set -euo pipefail

AGENTS=1000
ROUNDS=5
W=""
while [ $# -gt 0 ]; do
  case "$1" in
    --agents) AGENTS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) W=$1; shift ;;
  esac
done
[ "$AGENTS" -ge 1 ] && [ "$AGENTS" -le 5000 ] || { echo "--agents: 1 to 5000" >&2; exit 2; }
[ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 100 ] || { echo "--rounds: 1 to 100" >&2; exit 2; }

HERE=$(cd "$(dirname "$0")/.." && pwd)
KEEP=1
if [ -z "$W" ]; then
  W=$(mktemp -d /tmp/semithin-bench-vars.XXXXXX)
  KEEP=0
fi
mkdir -p "$W"
W=$(cd "$W" && pwd)
say() { echo "[vars] $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

if [ -z "${SEMITHIN:-}" ] || [ -z "${BENCH_VARS:-}" ]; then
  say "building release binaries"
  (cd "$HERE" && cargo build --release -q -p semithin --bin semithin --example bench_vars)
  T=${CARGO_TARGET_DIR:-$HERE/target}
  SEMITHIN=${SEMITHIN:-$T/release/semithin}
  BENCH_VARS=${BENCH_VARS:-$T/release/examples/bench_vars}
fi

# one socket per agent and its files: more than the usual 1,024
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((AGENTS * 4 + 256)) ] \
  || die "open files limit $(ulimit -n): $((AGENTS * 4 + 256)) needed for $AGENTS agents"

SERVER_PID=""
HELPER_PID=""
cleanup() {
  [ -n "$HELPER_PID" ] && kill "$HELPER_PID" 2>/dev/null || true
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  [ "$KEEP" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT

st() { env -u SEMITHIN_SERVER -u SEMITHIN_ADMIN_TOKEN -u SEMITHIN_ADMIN_CONFIG -u SEMITHIN_REPO HOME="$W/home" "$SEMITHIN" "$@"; }

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
say "server on $URL"
env -u SEMITHIN_CONFIG HOME="$W/home" "$SEMITHIN" serve --data "$W/data" --listen "127.0.0.1:$PORT" \
  --max-connections $((AGENTS * 2 + 64)) --max-wait 60 </dev/null >"$W/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 300); do
  curl -sf "$URL/api/v1/health" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited; see $W/server.log"
  sleep 0.1
done
curl -sf "$URL/api/v1/health" >/dev/null || die "the server does not answer; see $W/server.log"
TOKEN=$(cat "$W/data/admin-token")
adm() { env -u SEMITHIN_ADMIN_CONFIG HOME="$W/home" SEMITHIN_REPO="$W/data/repo" SEMITHIN_SERVER="$URL" \
  SEMITHIN_ADMIN_TOKEN="$TOKEN" "$SEMITHIN" "$@"; }

say "a tiny release with one template on bench/vars"
T=$W/tree
mkdir -p "$T/etc" "$T/usr/share/semithin/templates"
printf 'ID=bench\n' >"$T/etc/os-release"
cat >"$T/usr/share/semithin/templates/templates.toml" <<'EOF'
[[template]]
source = "motd.j2"
target = "/etc/motd"
EOF
printf 'round {{ round }}\n' >"$T/usr/share/semithin/templates/motd.j2"
adm commit "$T" --channel bench/vars -m "bench" >>"$W/admin.log" 2>&1 || die "commit failed; see $W/admin.log"
adm publish bench/vars >>"$W/admin.log" 2>&1 || die "publish failed; see $W/admin.log"
adm job keygen "$W/admin.key" >>"$W/admin.log" 2>&1 || die "keygen failed; see $W/admin.log"
adm var set --scope global --sign-key "$W/admin.key" round=setup >>"$W/admin.log" 2>&1 \
  || die "var set failed; see $W/admin.log"
ENROLL=$(adm fleet token create --preauthorized 2>>"$W/admin.log" | head -n 1)
[ -n "$ENROLL" ] || die "no enrollment token; see $W/admin.log"

say "$AGENTS agents (threads of the agent library) enroll"
mkdir -p "$W/agents"
"$BENCH_VARS" "$URL" "$TOKEN" "$ENROLL" "$W/data/repo/trust/metadata/1.root.json" "$W/admin.key" \
  "$W/agents" "$AGENTS" "$ROUNDS" >"$W/result.txt" 2>"$W/agents.log" &
HELPER_PID=$!
# assign them as they come (a machine enrolled after an assignment gets none)
for _ in $(seq 1 600); do
  kill -0 "$HELPER_PID" 2>/dev/null || break
  N=$(adm fleet list --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' || echo 0)
  adm fleet assign '*' bench/vars >>"$W/admin.log" 2>&1 || true
  [ "$N" -ge "$AGENTS" ] && break
  sleep 1
done
adm fleet assign '*' bench/vars >>"$W/admin.log" 2>&1 || true
wait "$HELPER_PID" || { HELPER_PID=""; cat "$W/result.txt" >&2; tail -n 20 "$W/agents.log" >&2; die "bench_vars failed"; }
HELPER_PID=""

RSS=$(grep VmHWM "/proc/$SERVER_PID/status" | awk '{print $2}')
cat "$W/result.txt"
SUMMARY=$(tail -n 1 "$W/result.txt")
echo
echo "### Variable change to $AGENTS agents ($(date -u +%Y-%m-%d), $(nproc) cores, $ROUNDS rounds)"
echo
echo "Command: \`bench/vars.sh --agents $AGENTS --rounds $ROUNDS\`"
echo
python3 - "$SUMMARY" "$RSS" <<'EOF'
import json, sys
s = json.loads(sys.argv[1])
print("| agents | rounds | median | p95 | max | last agent reached (median of rounds) | server peak RSS |")
print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
print(f"| {s['agents']} | {s['rounds']} | {s['median_ms']:.0f} ms | {s['p95_ms']:.0f} ms | "
      f"{s['max_ms']:.0f} ms | {s['all_reached_median_ms']:.0f} ms | {int(sys.argv[2]) // 1024} MiB |")
EOF
