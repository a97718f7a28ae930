#!/usr/bin/env bash
# Crash injection: kill -9 at random moments across a machine's update path (fetch, delta,
# stage, switch, prune and gc of its store) and the server's publish path (`semithin publish`
# signing, `semithin serve` building delta packs), each followed by a restart and a check of
# what must hold after any crash:
#   - the machine's `current` is exactly one complete release, the one the server published
#     (after one uninterrupted `agent --once`), `agent verify --no-fix` finds nothing wrong;
#   - its store holds everything every kept deployment needs (`fsck --release` of each);
#   - no `.staging-*` or `.part` leftovers after the recovery run;
#   - the server's repository passes `fsck`, its trust metadata `trust status`.
#
# Usage (as root, from the repository root):
#   bench/crash.sh [--kills N] [--minutes M] [--seed S] [--keep-work] [WORK_DIR]
# N (default 1000) counts every kill -9, of the agent and of the server side; with --minutes
# the run also ends after M minutes, and the report says how many kills it made. Every 4th round
# also kills `semithin publish` and every 8th `semithin serve` at a random moment.
# It prints a markdown section and writes it to bench/RESULTS.md (replacing its own part).
# Exit status 1 when any check failed after any kill (the failures are listed).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_DIR=$PWD

KILLS=1000
MINUTES=0
SEED=$RANDOM
KEEP_WORK=0
WORK=""
while [ $# -gt 0 ]; do
  case $1 in
  --kills) KILLS=$2; shift 2 ;;
  --seed) SEED=$2; shift 2 ;;
  --minutes) MINUTES=$2; shift 2 ;;
  --keep-work) KEEP_WORK=1; shift ;;
  -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
  -*) echo "crash.sh: unknown option $1" >&2; exit 2 ;;
  *) WORK=$1; shift ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "crash.sh: run as root (deployments keep owners and device nodes)" >&2; exit 2; }
RANDOM=$SEED

if [ -z "${SEMITHIN:-}" ]; then
  cargo build --release -p semithin >&2
  SEMITHIN=$(realpath "${CARGO_TARGET_DIR:-target}/release/semithin")
fi
BASE=$(tests/fixtures/debian-root.sh base)

[ -n "$WORK" ] || WORK=$(mktemp -d "${TMPDIR:-/tmp}/semithin-crash.XXXXXX")
mkdir -p "$WORK"
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ $KEEP_WORK -eq 0 ]; then rm -rf "$WORK"; else echo "work left in $WORK" >&2; fi
}
trap cleanup EXIT

log() { printf 'crash: %s\n' "$*" >&2; }

# --- three releases: the Debian root without /usr/share, gconv and perl (v1, 50 MB), with a security-update-like
# change of a few libraries and programs (v2), and with a new program tree added (v3).
log "making three trees from $BASE"
for v in 1 2 3; do
  rm -rf "$WORK/v$v"
  cp -a "$BASE" "$WORK/v$v"
  rm -rf "$WORK/v$v"/usr/share "$WORK/v$v"/usr/lib/x86_64-linux-gnu/{gconv,perl-base} "$WORK/v$v"/var/cache/apt/*.bin
done
# v2: a few changed programs and libraries (bytes appended: changed files for the delta)
for f in usr/bin/ls usr/bin/cp usr/lib/x86_64-linux-gnu/libc.so.6 usr/bin/apt-get; do
  [ -e "$WORK/v2/$f" ] && printf 'v2 change %s\n' "$f" >>"$(readlink -f "$WORK/v2/$f")"
done
# v3: v2 plus new content
cp -a "$WORK/v2/." "$WORK/v3/"
mkdir -p "$WORK/v3/opt/extra"
cp -a "$BASE/usr/share/doc" "$WORK/v3/opt/extra/doc"
head -c 8000000 /dev/urandom >"$WORK/v3/opt/extra/blob.bin"

# --- the server
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export SEMITHIN_SERVER=http://127.0.0.1:$PORT
export SEMITHIN_REPO=$WORK/server/repo
CHANNEL=crash/test
start_server() {
  "$SEMITHIN" serve --data "$WORK/server" --listen "127.0.0.1:$PORT" >>"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -sf "$SEMITHIN_SERVER/api/v1/health" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "server did not start"; tail -20 "$WORK/server.log" >&2; exit 1
}
start_server
export SEMITHIN_ADMIN_TOKEN=$(cat "$WORK/server/admin-token")
declare -a REL
for v in 1 2 3; do
  REL[$v]=$("$SEMITHIN" commit --channel "$CHANNEL" -m "v$v" --json "$WORK/v$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["commit"])')
  "$SEMITHIN" publish "$CHANNEL" >/dev/null
done
log "releases: ${REL[1]:0:12} ${REL[2]:0:12} ${REL[3]:0:12}"
TOKEN=$("$SEMITHIN" fleet token create --preauthorized --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
"$SEMITHIN" fleet assign '*' "$CHANNEL" >/dev/null 2>&1 || true

STATE=$WORK/agent
agent() {
  # exec: in a background subshell the pid of `$!` is the agent's own, so kill -9 hits it
  SEMITHIN_ENROLL_TOKEN=$TOKEN exec "$SEMITHIN" agent --state "$STATE" --name crash-1 \
    --trusted-root "$WORK/server/repo/trust/metadata/1.root.json" --keep 1 \
    --verify-interval 0 --inventory-interval 0 "$@"
}
(agent --once) >>"$WORK/agent.log" 2>&1 || true
"$SEMITHIN" fleet assign crash-1 "$CHANNEL" >/dev/null
(agent --once) >>"$WORK/agent.log" 2>&1 || { log "the first update failed"; tail "$WORK/agent.log" >&2; exit 1; }

# --- warm-up: every one of the six updates once, so the server has built each delta pack
# (kills then land in the machine's work, not in a wait for a build); the last three are timed
publish_release() { # publish REL[$1] on the channel
  "$SEMITHIN" channel set "$CHANNEL" "${REL[$1]}" -m "crash round" >/dev/null 2>>"$WORK/publish.err" &&
    "$SEMITHIN" publish "$CHANNEL" >/dev/null 2>>"$WORK/publish.err"
}
now_ms() { date +%s%3N; }
PUBLISH_MS=0 UPDATE_MS=0 n=0
for next in 1 2 3 1 3 2 1 3 2 1; do
  t0=$(now_ms); publish_release $next; t1=$(now_ms)
  (agent --once) >>"$WORK/agent.log" 2>&1 || { log "warm-up update to v$next failed"; tail "$WORK/agent.log" >&2; exit 1; }
  t2=$(now_ms)
  n=$((n + 1))
  if [ $n -gt 7 ]; then PUBLISH_MS=$((PUBLISH_MS + (t1 - t0) / 3)); UPDATE_MS=$((UPDATE_MS + (t2 - t1) / 3)); fi
done
current=1
log "one publish takes ${PUBLISH_MS} ms, one update ${UPDATE_MS} ms; kills land in [0, 1.2x] of that"

declare -A PHASES
FAILURES=()
kills=0 agent_kills=0 publish_kills=0 server_kills=0 finished_first=0 round=0
rand_ms() { echo $(((RANDOM * 32768 + RANDOM) % ($1 + 1))); }
sleep_ms() { sleep "$(printf '%d.%03d' $(($1 / 1000)) $(($1 % 1000)))"; }

check() { # $1: the release that must be current
  local want=$1 cur problems
  cur=$(readlink "$STATE/current" || true)
  [ "$(basename "$cur")" = "$want" ] || { echo "current is '$cur', want $want"; return; }
  if ls -d "$STATE"/deployments/.staging-* "$STATE"/*.part "$STATE"/repo/tmp/* 2>/dev/null | grep -q .; then
    echo "leftovers: $(ls -d "$STATE"/deployments/.staging-* "$STATE"/*.part 2>/dev/null | head -3)"
    return
  fi
  local rc=0
  (agent verify --no-fix --json) >"$WORK/verify.json" 2>"$WORK/verify.err" || rc=$?
  problems=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(len(r["problems"]), r["problems"][:3])' "$WORK/verify.json" 2>&1) ||
    problems="(no report, exit $rc) $(tail -c 300 "$WORK/verify.err") $(head -c 300 "$WORK/verify.json")"
  [ "${problems%% *}" = "0" ] || { echo "verify: $problems"; return; }
  local args=()
  for d in "$STATE"/deployments/*; do
    [ -d "$d" ] && args+=(--release "$(basename "$d")")
  done
  "$SEMITHIN" --repo "$STATE/repo" fsck "${args[@]}" >/dev/null 2>"$WORK/fsck.err" ||
    { echo "agent store fsck: $(tail -2 "$WORK/fsck.err")"; return; }
}

START=$(date +%s)
while [ $kills -lt "$KILLS" ]; do
  if [ "$MINUTES" -gt 0 ] && [ $(($(date +%s) - START)) -ge $((MINUTES * 60)) ]; then
    log "time is up after $kills kills"
    break
  fi
  round=$((round + 1))
  next=$(((current + RANDOM % 2) % 3 + 1))
  # the server's publish path
  if [ $((round % 4)) -eq 0 ]; then
    "$SEMITHIN" channel set "$CHANNEL" "${REL[$next]}" -m "crash round" >/dev/null
    "$SEMITHIN" publish "$CHANNEL" >/dev/null 2>&1 &
    pid=$!
    sleep_ms "$(rand_ms $((PUBLISH_MS * 12 / 10)))"
    kill -9 $pid 2>/dev/null && { kills=$((kills + 1)); publish_kills=$((publish_kills + 1)); } || true
    wait $pid 2>/dev/null || true
    if ! out=$("$SEMITHIN" trust status 2>&1); then FAILURES+=("round $round, publish killed: trust status: ${out: -200}"); fi
    "$SEMITHIN" publish "$CHANNEL" >/dev/null 2>"$WORK/publish.err" ||
      FAILURES+=("round $round, publish killed: publish again failed: $(tail -1 "$WORK/publish.err")")
  elif ! publish_release "$next"; then
    FAILURES+=("round $round: publishing failed: $(tail -1 "$WORK/publish.err")")
    continue
  fi
  if [ $((round % 8)) -eq 0 ]; then
    sleep_ms "$(rand_ms 1500)" # delta packs are being built for the new release
    kill -9 "$SERVER_PID" && { kills=$((kills + 1)); server_kills=$((server_kills + 1)); }
    wait "$SERVER_PID" 2>/dev/null || true
    start_server
  fi
  # the agent's update path
  : >"$WORK/round.log"
  (agent --once) >>"$WORK/round.log" 2>&1 &
  pid=$!
  sleep_ms "$(rand_ms $((UPDATE_MS * 12 / 10)))"
  if kill -9 $pid 2>/dev/null; then
    kills=$((kills + 1)); agent_kills=$((agent_kills + 1))
    phase=$({ grep -v '^\s*$' "$WORK/round.log" || true; } | tail -1 | sed -E 's/[0-9a-f]{12,}/ID/g; s/[0-9]+/N/g' | cut -c1-60)
    PHASES["${phase:-(before any output)}"]=$((${PHASES["${phase:-(before any output)}"]:-0} + 1))
  else
    phase="(finished before the kill)"
    finished_first=$((finished_first + 1))
  fi
  wait $pid 2>/dev/null || true
  cat "$WORK/round.log" >>"$WORK/agent.log"
  # restart: one uninterrupted run must finish the update
  if ! (agent --once) >>"$WORK/agent.log" 2>&1; then
    FAILURES+=("round $round: the recovery run failed: $(tail -1 "$WORK/agent.log")")
  fi
  current=$next
  if problem=$(check "${REL[$current]}") && [ -n "$problem" ]; then
    FAILURES+=("round $round (kill after: ${phase:-}): $problem")
    {
      echo "== round $round: $problem"; cat "$WORK/round.log"; echo "== recovery:"; tail -5 "$WORK/agent.log"
      ls -la --full-time "$STATE" "$STATE/deployments"; ls "$STATE"/deployments/* | head -5; cat "$STATE/state.json"
    } >>"$WORK/failures.log" 2>&1
    log "round $round: $problem"
  fi
  if [ $((round % 25)) -eq 0 ]; then log "round $round: $kills kills, ${#FAILURES[@]} failures"; fi
done
# the server's repository and trust after all of it
"$SEMITHIN" fsck >/dev/null 2>&1 || FAILURES+=("server repository fsck failed")
"$SEMITHIN" trust status >/dev/null 2>&1 || FAILURES+=("server trust status failed")
ELAPSED=$(($(date +%s) - START))

{
  echo "## Crash injection (kill -9 on the update and publish paths)"
  echo
  minutes=""
  [ "$MINUTES" -gt 0 ] && minutes=" --minutes $MINUTES"
  echo "Command: \`bench/crash.sh --kills $KILLS$minutes --seed $SEED\` ($(date -u +%Y-%m-%d), $(nproc) cores, ${ELAPSED} s, $kills kills made)."
  echo "Releases: a Debian bookworm minbase root without /usr/share, gconv and perl (v1, 50 MB), a few changed"
  echo "programs and libc (v2), v2 plus 17 MB of new files (v3); the machine keeps 1 deployment"
  echo "besides the current one, so every update also prunes and collects its store."
  echo "One publish took ${PUBLISH_MS} ms, one update ${UPDATE_MS} ms; each kill lands at a uniformly random"
  echo "moment in [0, 1.2x] of that."
  echo
  echo "| | count |"
  echo "| --- | --- |"
  echo "| kill -9 in all | $kills |"
  echo "| of the agent (\`agent --once\` updating) | $agent_kills |"
  echo "| of \`semithin publish\` | $publish_kills |"
  echo "| of \`semithin serve\` (building delta packs after a publish) | $server_kills |"
  echo "| rounds where the agent finished before its kill | $finished_first |"
  echo "| checks failed after a restart | ${#FAILURES[@]} |"
  echo
  echo "Where the agent was when killed (its last line of output, ids and numbers masked):"
  echo
  echo "| last output before the kill | kills |"
  echo "| --- | --- |"
  for k in "${!PHASES[@]}"; do printf '| %s | %s |\n' "${k//|/\\|}" "${PHASES[$k]}"; done | sort -t'|' -k3 -rn
  if [ ${#FAILURES[@]} -gt 0 ]; then
    echo
    echo "Failures:"
    printf -- '- %s\n' "${FAILURES[@]:0:50}"
  fi
} >"$WORK/report.md"
cat "$WORK/report.md"

python3 - "$REPO_DIR/bench/RESULTS.md" "$WORK/report.md" <<'EOF'
import re, sys
path, new = sys.argv[1], open(sys.argv[2]).read().rstrip() + "\n"
head = "## Crash injection"
try:
    old = open(path).read()
except FileNotFoundError:
    old = ""
start = old.find(head)
if start < 0:
    out = old.rstrip() + "\n\n" + new
else:
    m = re.compile(r"^## ", re.M).search(old, start + len(head))
    end = m.start() if m else len(old)
    out = old[:start] + new + ("\n" + old[end:] if m else "")
open(path, "w").write(out)
EOF
[ ${#FAILURES[@]} -eq 0 ]
