#!/usr/bin/env bash
# Fleet benchmark: (a) "nothing new" check-ins per second and their latency with 100,000
# machines enrolled in the server's SQLite database, load from a second process on loopback;
# (b) the agent's resident memory while idle and while installing and updating a real Debian
# tree. Goals: >= 5,000 check-ins/s at p99 < 50 ms on 2 cores; agent <= 20 MiB idle, <= 64 MiB
# while updating.
#
# Usage: bench/fleet.sh [--quick] [--checkin-only | --agent-only] [WORK_DIR]
#        (as root for the agent part; see bench/README.md)
#
#   --quick         10,000 machines and 10 s of load instead of 100,000 and 30 s
#   WORK_DIR        where everything is written (kept afterwards); default a new temporary
#                   directory, removed at the end. Nothing is written anywhere else.
# Environment:
#   SEMITHIN, BENCH_FLEET  prebuilt `semithin` and `bench_fleet` (example) binaries instead of
#                  `cargo build --release -p semithin --bin semithin --example bench_fleet`
#   TREES          a make-trees.sh directory that already holds trees/v1 and trees/v2 (read
#                  only); default: make-trees.sh builds them in WORK_DIR/debian (a few minutes)
#   SHARED_BENCH   where make-trees.sh is (default <this repo>/../shared/bench)
#   MACHINES, DURATION, WARMUP, CONNECTIONS, THREADS   override the check-in load settings
#   ROUNDS         signed check-ins per machine for the measured run (each is accepted once)
#   WAIT_IDLE_MAX  seconds to wait for other processes' CPU load to end before the load starts
#                  (default 60; 0 = do not wait); their CPU use during the run is reported
#
# How (a) is set up, and why:
# - Enrolling 100,000 machines through the API would take most of the run, so `bench_fleet
#   populate` writes their rows straight into DATA/fleet.db with the server's own schema and
#   insert function, in one transaction: accepted, on a channel with a published release, and
#   with a stored report that is exactly what the load generator sends (current = the release,
#   healthy). The server then starts normally from that database (loading all machines into
#   memory as it always does) and serves real signed check-ins.
# - Each check-in is the real "nothing new" path of http/agent.rs `checkin`: look up the machine,
#   hex-decode and ed25519 verify_strict the signature over method, path, date and BLAKE3 of the
#   body, parse the JSON body, compare the report with the stored one (equal: no database
#   write), note the last-seen time in memory (written in one transaction every 5 s for all
#   machines seen, so that SQLite work is part of the figure), build the answer (the channel's
#   release; not actionable, since report.current is that release) and, as wait_secs is 0,
#   answer at once. No long poll is held: this measures the cost of a check-in, not how many
#   idle connections the server can hold.
# - Load: wrk (one thread, a bounded number of keep-alive connections) replays pre-signed
#   requests, one per machine, round robin (bench/checkin.lua). Signatures are valid for 300 s,
#   so signing them all just before the run is what many machines would send; it keeps the load
#   generator's CPU low, which matters when it shares the 2 cores with the server. Requests are
#   replayed, so the server verifies each signature anew, as it would for new ones.
# - wrk's latencies come from a closed loop (each connection waits for its answer), so they do
#   not include queueing a real open-loop fleet would add past saturation; p50/p99 are wrk's.
#   A run fails if any response has a status >= 400 or any socket error or timeout occurs, if the
#   server counted a different number of check-ins than were sent, or if afterwards a stored
#   report differs from the one sent (which would mean the path was not "nothing new").
# - CPU seconds of the server and of wrk during the run are read from /proc, to show where the
#   two cores went.
#
# How (b) is set up:
# - A second server with its own data directory; v1 (debootstrap --variant=minbase bookworm)
#   and v2 (v1 after the security updates) from the shared make-trees.sh are committed into its
#   repository and published with the CLI, as an admin would.
# - One agent daemon (`semithin agent`, not --once; --verify-interval 0 so the daily re-hash
#   does not run in the middle of the measurement; it is measured on its own as `agent verify`).
#   It enrolls with a preauthorized token and is assigned the channel: its VmHWM once the server
#   says it is updated is the peak of the first full install of v1. Then it is restarted and left
#   in its long-poll check-in: VmRSS/VmHWM after it settles are the idle figures. Then v2 is
#   published (which wakes it): its VmHWM once updated is the peak of the v1 -> v2 update.
#   Figures come from /proc/PID/status of the agent process (MiB = 2^20 bytes).
set -euo pipefail

CMDLINE=
for var in SEMITHIN BENCH_FLEET TREES SHARED_BENCH MACHINES DURATION WARMUP CONNECTIONS THREADS WAIT_IDLE_MAX; do
  if [ -n "${!var:-}" ]; then CMDLINE+="$var=$(printf '%q' "${!var}") "; fi
done
CMDLINE+="bench/fleet.sh"
for a in "$@"; do
  case $a in
    -*) CMDLINE+=" $a" ;;
    *) CMDLINE+=" WORK_DIR" ;; # where the scratch files went does not change the figures
  esac
done

die() {
  printf 'fleet: error: %s\n' "$*" >&2
  exit 1
}
say() { printf '== %s\n' "$*" >&2; }

QUICK=0 DO_CHECKIN=1 DO_AGENT=1 WORK_ARG=
for a in "$@"; do
  case $a in
    --quick) QUICK=1 ;;
    --checkin-only) DO_AGENT=0 ;;
    --agent-only) DO_CHECKIN=0 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    -*) die "unknown option $a (see --help)" ;;
    *)
      [ -z "$WORK_ARG" ] || die "one work directory only"
      WORK_ARG=$a
      ;;
  esac
done
[ "$DO_CHECKIN$DO_AGENT" != 00 ] || die "--checkin-only and --agent-only exclude each other"

if [ "$QUICK" = 1 ]; then
  MACHINES=${MACHINES:-10000} DURATION=${DURATION:-10} WARMUP=${WARMUP:-3}
else
  MACHINES=${MACHINES:-100000} DURATION=${DURATION:-30} WARMUP=${WARMUP:-5}
fi
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-1}
WAIT_IDLE_MAX=${WAIT_IDLE_MAX:-60}
GOAL_RATE=5000 GOAL_P99_MS=50 GOAL_IDLE_MIB=20 GOAL_UPDATE_MIB=64

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
if [ "$DO_AGENT" = 1 ]; then
  [ "$(id -u)" -eq 0 ] || die "the agent part must run as root (the Debian trees keep owners and device nodes); use --checkin-only otherwise"
fi

# --- tools -------------------------------------------------------------------------------------
need_pkgs=()
command -v curl >/dev/null || need_pkgs+=(curl)
[ -x /usr/bin/time ] || need_pkgs+=(time)
if [ "$DO_CHECKIN" = 1 ]; then command -v wrk >/dev/null || need_pkgs+=(wrk); fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "apt-get install ${need_pkgs[*]}"
  { apt-get install -y -q "${need_pkgs[@]}" || { apt-get update -q && apt-get install -y -q "${need_pkgs[@]}"; }; } >&2 ||
    die "could not install ${need_pkgs[*]}"
fi

# --- binaries ----------------------------------------------------------------------------------
if [ -n "${SEMITHIN:-}" ] || [ -n "${BENCH_FLEET:-}" ]; then
  if [ -z "${SEMITHIN:-}" ] || [ -z "${BENCH_FLEET:-}" ]; then die "give both SEMITHIN and BENCH_FLEET, or neither"; fi
  BIN=$(realpath -e "$SEMITHIN") || die "SEMITHIN=$SEMITHIN does not exist"
  HELPER=$(realpath -e "$BENCH_FLEET") || die "BENCH_FLEET=$BENCH_FLEET does not exist"
  BIN_ORIGIN="prebuilt binaries given in SEMITHIN and BENCH_FLEET"
else
  say "cargo build --release -p semithin --bin semithin --example bench_fleet"
  (cd "$REPO_ROOT" && cargo build --release -p semithin --bin semithin --example bench_fleet >&2)
  T=$(cd "$REPO_ROOT" && realpath -e "${CARGO_TARGET_DIR:-target}")
  BIN=$T/release/semithin HELPER=$T/release/examples/bench_fleet
  BIN_ORIGIN="built by this run from $(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo 'an unknown revision')"
fi
for b in "$BIN" "$HELPER"; do [ -x "$b" ] || die "$b is not executable"; done

# --- work dir and cleanup ----------------------------------------------------------------------
if [ -n "$WORK_ARG" ]; then
  mkdir -p "$WORK_ARG"
  W=$(cd "$WORK_ARG" && pwd)
  REMOVE_W=0
else
  W=$(mktemp -d "${TMPDIR:-/tmp}/semithin-fleet.XXXXXX")
  REMOVE_W=1
fi
PIDS=()
stop_pid() { # stop_pid PID: SIGTERM, up to 10 s, then SIGKILL
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [ "$REMOVE_W" = 1 ]; then rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$W/home"

# semithin with nothing of the caller's admin settings (HOME is inside the work dir)
st() { env -u SEMITHIN_SERVER -u SEMITHIN_ADMIN_TOKEN -u SEMITHIN_ADMIN_CONFIG -u SEMITHIN_REPO HOME="$W/home" "$BIN" "$@"; }
json_field() { # json_field KEY < JSON: the first value of KEY (string or number)
  grep -o "\"$1\"[[:space:]]*:[[:space:]]*\"\{0,1\}[^,}\"]*" | head -n 1 | sed 's/^[^:]*:[[:space:]]*"\{0,1\}//'
}
kv() { # kv KEY < "k=v k=v" line
  tr ' ' '\n' | sed -n "s/^$1=//p"
}
cpu_ticks() { # user + system clock ticks of a process
  local s
  s=$(<"/proc/$1/stat")
  s=${s##*) }
  awk '{ print $12 + $13 }' <<<"$s"
}
machine_jiffies() { # busy and total jiffies of the whole machine
  local _c u n s i io irq sirq st
  read -r _c u n s i io irq sirq st _ </proc/stat
  echo "$((u + n + s + irq + sirq + st)) $((u + n + s + i + io + irq + sirq + st))"
}
wait_idle() { # until the machine is (almost) idle for a second, at most WAIT_IDLE_MAX seconds
  local start=$SECONDS b1 t1 b2 t2 pct
  [ "$WAIT_IDLE_MAX" -gt 0 ] || return 0
  while :; do
    read -r b1 t1 < <(machine_jiffies)
    sleep 1
    read -r b2 t2 < <(machine_jiffies)
    pct=$((100 * (b2 - b1) / (t2 - t1 > 0 ? t2 - t1 : 1)))
    [ "$pct" -lt 10 ] && return 0
    if [ $((SECONDS - start)) -ge "$WAIT_IDLE_MAX" ]; then
      say "machine still ${pct}% busy after ${WAIT_IDLE_MAX} s of waiting; measuring anyway"
      return 0
    fi
  done
}
proc_kib() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; } # seconds since $1
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
commas() { sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|[^0-9]\)/\1,\2\3/' -e 'ta' <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
wait_for() { # wait_for WHAT SECS CMD...: until CMD succeeds
  local what=$1 secs=$2 end
  shift 2
  end=$((SECONDS + secs))
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || die "$what: not within $secs s"
    sleep 0.2
  done
}
alive() { kill -0 "$1" 2>/dev/null || die "$2 exited; see ${3:-its log}"; }
server_up() { # server_up LOG: the server started last answers (dies when it exited)
  alive "$SERVER_PID" "the server" "$1"
  curl -sf "$URL/api/v1/health" >/dev/null 2>&1
}
tree_files() { find "$1" -type f | wc -l; }

# start_server DATA LOG -> sets SERVER_PID, URL
start_server() {
  local port
  port=$("$HELPER" free-port)
  URL=http://127.0.0.1:$port
  env -u SEMITHIN_CONFIG -u SEMITHIN_LOG HOME="$W/home" \
    "$BIN" serve --data "$1" --listen "127.0.0.1:$port" </dev/null >>"$2" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
}
stats_checkins() { curl -sf -H "Authorization: Bearer $2" "$1/api/v1/admin/stats" | json_field checkins; }

FAILED=()

# --- (a) check-ins -----------------------------------------------------------------------------
if [ "$DO_CHECKIN" = 1 ]; then
  A=$W/checkin
  mkdir -p "$A/tiny/etc"
  printf 'ID=bench\n' >"$A/tiny/etc/os-release"
  CH=bench/fleet
  say "check-ins: a server data directory with a release on $CH"
  "$HELPER" init "$A/data" 2>"$A/init.log"
  REL=$(st --repo "$A/data/repo" commit "$A/tiny" --channel "$CH" --json 2>>"$A/init.log" | json_field commit)
  [ -n "$REL" ] || die "commit failed; see $A/init.log"
  st --repo "$A/data/repo" publish "$CH" >>"$A/init.log" 2>&1 || die "publish failed; see $A/init.log"

  say "check-ins: $MACHINES machines into fleet.db (one transaction)"
  t0=$(date +%s.%N)
  "$HELPER" populate "$A/data" "$MACHINES" "$CH" "$REL" 2>>"$A/init.log" || die "populate failed; see $A/init.log"
  POPULATE_S=$(since "$t0")
  DB_BYTES=$(du -cb "$A/data"/fleet.db* | tail -n 1 | cut -f1)

  t0=$(date +%s.%N)
  start_server "$A/data" "$A/server.log"
  wait_for "the check-in server answering" 300 server_up "$A/server.log"
  START_S=$(since "$t0")
  ADMIN_TOKEN=$(cat "$A/data/admin-token")
  grep -q "machines=$MACHINES" "$A/server.log" || die "the server did not load $MACHINES machines; see $A/server.log"
  SERVER_RSS_START=$(proc_kib "$SERVER_PID" VmRSS)

  # Each signed check-in is accepted once: enough rounds for the run at up to 8,000 check-ins
  # per second, and the warm-up's own (with counters below the run's).
  WROUNDS=$((WARMUP * 8000 / MACHINES + 2))
  ROUNDS=${ROUNDS:-$((DURATION * 8000 / MACHINES + 1))}
  say "check-ins: pre-signing $((WROUNDS + ROUNDS)) check-in(s) per machine"
  t0=$(date +%s.%N)
  "$HELPER" sign "$MACHINES" "$REL" "$A/requests-warmup.txt" "$WROUNDS"
  "$HELPER" sign "$MACHINES" "$REL" "$A/requests.txt" "$ROUNDS" "$WROUNDS"
  SIGN_S=$(since "$t0")
  SIGNED_AT=$(head -n 1 "$A/requests.txt")

  # one request by hand: 200 with the release and not woken; the same with another machine's
  # id must be refused (the signature is really checked)
  DATE=$(sed -n 1p "$A/requests-warmup.txt") BODY=$(sed -n 2p "$A/requests-warmup.txt")
  read -r ID0 COUNTER0 SIG0 < <(sed -n 4p "$A/requests-warmup.txt")
  read -r ID1 _ < <(sed -n 5p "$A/requests-warmup.txt")
  probe() { # probe ID SIG -> "STATUS BODY"
    curl -s -o "$A/probe.out" -w '%{http_code}' -X POST "$URL/api/v1/checkin" \
      -H 'content-type: application/json' -H "semithin-machine: $1" -H "semithin-date: $DATE" \
      -H "semithin-counter: $COUNTER0" -H "semithin-signature: $2" --data-binary "$BODY"
  }
  code=$(probe "$ID1" "$SIG0")
  [ "$code" = 401 ] || die "a check-in with another machine's signature got HTTP $code, not 401"
  code=$(probe "$ID0" "$SIG0")
  [ "$code" = 200 ] || die "a pre-signed check-in got HTTP $code: $(cat "$A/probe.out")"
  grep -q "\"release\":\"$REL\".*\"woken\":false" "$A/probe.out" ||
    die "unexpected check-in answer: $(cat "$A/probe.out")"
  code=$(probe "$ID0" "$SIG0")
  [ "$code" = 409 ] || die "a replayed check-in got HTTP $code, not 409"

  WRK=(wrk -t "$THREADS" -c "$CONNECTIONS" --timeout 5s -s "$SCRIPT_DIR/checkin.lua")
  wait_idle
  say "check-ins: warm-up, ${WARMUP} s"
  "${WRK[@]}" -d "${WARMUP}s" "$URL" -- "$A/requests-warmup.txt" "$THREADS" 1 >"$A/wrk-warmup.out" 2>&1 ||
    die "wrk failed; see $A/wrk-warmup.out"
  alive "$SERVER_PID" "the server" "$A/server.log"
  sleep 6 # let the warm-up's last-seen batch be written before measuring

  say "check-ins: $DURATION s with $CONNECTIONS connections, $THREADS wrk thread(s)"
  before=$(stats_checkins "$URL" "$ADMIN_TOKEN")
  srv0=$(cpu_ticks "$SERVER_PID")
  read -r mb0 mt0 < <(machine_jiffies)
  /usr/bin/time -f '%U %S' -o "$A/wrk.time" "${WRK[@]}" -d "${DURATION}s" --latency \
    "$URL" -- "$A/requests.txt" "$THREADS" >"$A/wrk.out" 2>&1 || die "wrk failed; see $A/wrk.out"
  read -r mb1 mt1 < <(machine_jiffies)
  srv1=$(cpu_ticks "$SERVER_PID")
  after=$(stats_checkins "$URL" "$ADMIN_TOKEN")
  ELAPSED_SINCE_SIGN=$(($(date +%s) - SIGNED_AT))
  alive "$SERVER_PID" "the server" "$A/server.log"

  line=$(grep '^CHECKIN ' "$A/wrk.out") || die "no summary from wrk; see $A/wrk.out"
  REQS=$(kv requests <<<"$line") DUR_US=$(kv duration_us <<<"$line")
  P50=$(kv p50_us <<<"$line") P90=$(kv p90_us <<<"$line") P99=$(kv p99_us <<<"$line") PMAX=$(kv max_us <<<"$line")
  E_STATUS=$(kv status <<<"$line")
  E_SOCK=$(($(kv connect <<<"$line") + $(kv read <<<"$line") + $(kv write <<<"$line") + $(kv timeout <<<"$line")))
  RATE=$(awk -v r="$REQS" -v d="$DUR_US" 'BEGIN { printf "%.0f", r / (d / 1e6) }')
  HZ=$(getconf CLK_TCK)
  SRV_CPU=$(awk -v t=$((srv1 - srv0)) -v hz="$HZ" 'BEGIN { printf "%.1f", t / hz }')
  SRV_US=$(awk -v t=$((srv1 - srv0)) -v hz="$HZ" -v r="$REQS" 'BEGIN { printf "%.0f", t / hz / r * 1e6 }')
  read -r wu ws <"$A/wrk.time"
  WRK_CPU=$(awk -v u="$wu" -v s="$ws" 'BEGIN { printf "%.1f", u + s }')
  BUSY=$(awk -v b=$((mb1 - mb0)) -v t=$((mt1 - mt0)) 'BEGIN { printf "%.0f", 100 * b / t }')
  OTHER_CPU=$(awk -v b=$((mb1 - mb0)) -v hz="$HZ" -v s="$SRV_CPU" -v w="$WRK_CPU" 'BEGIN { o = b / hz - s - w; printf "%.1f", o < 0 ? 0 : o }')
  SERVER_COUNTED=$((after - before))
  SERVER_RSS_RUN=$(proc_kib "$SERVER_PID" VmRSS)

  say "check-ins: stopping the server, checking the stored reports"
  stop_pid "$SERVER_PID"
  CHECK=$("$HELPER" check "$A/data" "$MACHINES" "$CH" "$REL" 2>>"$A/init.log")
  UNCHANGED=$(kv report_unchanged <<<"$CHECK") ON_CH=$(kv accepted_on_channel <<<"$CHECK")

  # a connection still waiting for its answer when wrk stops is counted by the server only
  [ "$E_STATUS" = 0 ] || FAILED+=("$E_STATUS check-ins answered with status >= 400")
  [ "$E_SOCK" = 0 ] || FAILED+=("$E_SOCK socket errors or timeouts")
  [ "$SERVER_COUNTED" -ge "$REQS" ] && [ "$SERVER_COUNTED" -le $((REQS + CONNECTIONS)) ] ||
    FAILED+=("the server counted $SERVER_COUNTED check-ins, wrk $REQS")
  [ "$UNCHANGED" = "$MACHINES" ] && [ "$ON_CH" = "$MACHINES" ] ||
    FAILED+=("after the run: $CHECK (a changed report means the path was not \"nothing new\")")
  [ "$ELAPSED_SINCE_SIGN" -lt 290 ] || FAILED+=("the run ended $ELAPSED_SINCE_SIGN s after signing (signatures last 300 s)")
fi

# --- (b) agent memory --------------------------------------------------------------------------
if [ "$DO_AGENT" = 1 ]; then
  if [ -n "${TREES:-}" ]; then
    TD=$(cd "$TREES" && pwd)
  else
    SHARED=${SHARED_BENCH:-$SCRIPT_DIR/../../shared/bench}
    [ -f "$SHARED/make-trees.sh" ] || die "no make-trees.sh in $SHARED (set SHARED_BENCH, or TREES to built trees)"
    TD=$W/debian
    say "agent: Debian trees: make-trees.sh $TD (debootstrap; a few minutes)"
    bash "$SHARED/make-trees.sh" "$TD" >"$W/make-trees.log" 2>&1 || die "make-trees.sh failed; see $W/make-trees.log"
  fi
  for v in v1 v2; do [ -d "$TD/trees/$v" ] || die "no tree $TD/trees/$v"; done

  B=$W/agent
  mkdir -p "$B"
  CH=bench/debian NAME=bench-agent
  start_server "$B/data" "$B/server.log"
  AURL=$URL ASERVER_PID=$SERVER_PID
  wait_for "the agent's server answering" 120 server_up "$B/server.log"
  ATOKEN=$(cat "$B/data/admin-token")
  adm() { # semithin as this server's admin, on its repository
    env -u SEMITHIN_ADMIN_CONFIG HOME="$W/home" SEMITHIN_REPO="$B/data/repo" SEMITHIN_SERVER="$AURL" \
      SEMITHIN_ADMIN_TOKEN="$ATOKEN" "$BIN" "$@"
  }
  show() { adm fleet show "$NAME" --json 2>/dev/null; }
  updated_to() { show | tr -d ' \n' | grep -q "\"updated\":true.*\"current\":\"$1\"\|\"current\":\"$1\".*\"updated\":true"; }
  release() { # release TREE -> commit id, committed and published (the server is told)
    local id
    id=$(adm commit "$1" --channel "$CH" --json 2>>"$B/admin.log" | json_field commit)
    [ -n "$id" ] || die "commit of $1 failed; see $B/admin.log"
    adm publish "$CH" >>"$B/admin.log" 2>&1 || die "publish failed; see $B/admin.log"
    echo "$id"
  }

  say "agent: commit and publish v1"
  V1=$(release "$TD/trees/v1")
  ENROLL=$(adm fleet token create --preauthorized 2>>"$B/admin.log" | head -n 1)
  [ -n "$ENROLL" ] || die "no enrollment token; see $B/admin.log"
  start_agent() {
    env -u SEMITHIN_STATE HOME="$W/home" "$BIN" agent --state "$B/state" --server "$AURL" \
      --token "$ENROLL" --name "$NAME" --trusted-root "$B/data/repo/trust/metadata/1.root.json" \
      --verify-interval 0 --interval 300 </dev/null >>"$B/agent.log" 2>&1 &
    AGENT_PID=$!
    PIDS+=("$AGENT_PID")
  }
  hwm() { mib "$(proc_kib "$AGENT_PID" VmHWM)"; }
  rss() { mib "$(proc_kib "$AGENT_PID" VmRSS)"; }

  say "agent: enroll, assign $CH, first install of v1"
  start_agent
  enrolled() { show >/dev/null; }
  wait_for "the agent enrolling" 60 enrolled
  ENROLLED_RSS=$(rss)
  t0=$(date +%s.%N)
  adm fleet assign "$NAME" "$CH" >>"$B/admin.log" 2>&1 || die "assign failed; see $B/admin.log"
  wait_for "the agent installing v1" 1800 updated_to "$V1"
  alive "$AGENT_PID" "the agent" "$B/agent.log"
  INSTALL_S=$(since "$t0") INSTALL_HWM=$(hwm) INSTALL_RSS_END=$(rss)

  say "agent: restart, idle in the long poll"
  stop_pid "$AGENT_PID"
  before=$(stats_checkins "$AURL" "$ATOKEN")
  start_agent
  checked_in_since() { [ "$(stats_checkins "$AURL" "$ATOKEN")" -gt "$1" ]; }
  wait_for "the restarted agent checking in" 60 checked_in_since "$before"
  sleep 10
  alive "$AGENT_PID" "the agent" "$B/agent.log"
  IDLE_RSS=$(rss) IDLE_HWM=$(hwm)

  say "agent: commit and publish v2, update v1 -> v2"
  t0=$(date +%s.%N)
  V2=$(release "$TD/trees/v2")
  wait_for "the agent updating to v2" 1800 updated_to "$V2"
  alive "$AGENT_PID" "the agent" "$B/agent.log"
  UPDATE_S=$(since "$t0") UPDATE_HWM=$(hwm)
  sleep 10
  AFTER_RSS=$(rss)
  FETCHED=$(show | json_field fetched_bytes)
  stop_pid "$AGENT_PID"

  say "agent: agent verify (re-hash of the running v2), as its own process"
  if /usr/bin/time -f '%e %M' -o "$B/verify.time" env HOME="$W/home" "$BIN" agent --state "$B/state" \
    verify --no-fix --json >"$B/verify.json" 2>>"$B/agent.log"; then
    read -r VERIFY_S VERIFY_KIB <"$B/verify.time"
  else
    FAILED+=("agent verify found the v2 deployment differing from its release (see $B/verify.json)")
    read -r VERIFY_S VERIFY_KIB < <(tail -n 1 "$B/verify.time")
  fi
  stop_pid "$ASERVER_PID"
fi

# --- report ------------------------------------------------------------------------------------
yes_no() { if awk -v a="$1" -v b="$2" -v op="$3" 'BEGIN { exit !(op == "ge" ? a >= b : op == "lt" ? a < b : a <= b) }'; then echo yes; else echo no; fi; }
ms() { awk -v u="$1" 'BEGIN { printf "%.2f", u / 1000 }'; }

echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — fleet: \`$CMDLINE\`"
echo
echo "- machine: $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r), $(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)"
echo "- semithin: $("$BIN" --version 2>/dev/null | head -n 1); $BIN_ORIGIN"
if [ "$DO_CHECKIN" = 1 ]; then
  echo "- load: $(wrk --version 2>&1 | head -n 1 | cut -d' ' -f1-2), $THREADS thread(s), $CONNECTIONS keep-alive connections, ${WARMUP} s warm-up then ${DURATION} s measured, on loopback; server and wrk share the cores"
  echo
  echo "### \"Nothing new\" check-ins, $(commas "$MACHINES") machines in SQLite"
  echo
  echo "| measure | measured | goal | measured / goal | met |"
  echo "| --- | ---: | ---: | ---: | --- |"
  echo "| check-ins per second | $(commas "$RATE") | ≥ $(commas "$GOAL_RATE") | $(ratio "$RATE" "$GOAL_RATE") | $(yes_no "$RATE" "$GOAL_RATE" ge) |"
  echo "| p50 latency, ms | $(ms "$P50") | | | |"
  echo "| p90 latency, ms | $(ms "$P90") | | | |"
  echo "| p99 latency, ms | $(ms "$P99") | < $GOAL_P99_MS | $(ratio "$(ms "$P99")" "$GOAL_P99_MS") | $(yes_no "$(ms "$P99")" "$GOAL_P99_MS" lt) |"
  echo "| max latency, ms | $(ms "$PMAX") | | | |"
  echo "| responses with status ≥ 400 / socket errors and timeouts | $E_STATUS / $E_SOCK | 0 / 0 | | $([ "$E_STATUS$E_SOCK" = 00 ] && echo yes || echo no) |"
  echo
  echo "- $(commas "$REQS") check-ins in $(awk -v d="$DUR_US" 'BEGIN { printf "%.1f", d / 1e6 }') s; the server counted $(commas "$SERVER_COUNTED")"
  echo "- CPU during the run: server $SRV_CPU s ($SRV_US µs per check-in), wrk $WRK_CPU s, other processes $OTHER_CPU s; the machine was ${BUSY}% busy"
  echo "- server: started with $(commas "$MACHINES") machines in $START_S s (fleet.db $(commas "$DB_BYTES") B, written in $POPULATE_S s); RSS $(mib "$SERVER_RSS_START") MiB after start, $(mib "$SERVER_RSS_RUN") MiB after the run"
  echo "- after the run (server stopped): $CHECK; signing $(commas "$MACHINES") requests took $SIGN_S s"
fi
if [ "$DO_AGENT" = 1 ]; then
  echo
  echo "### Agent memory (\`semithin agent\` daemon, /proc/PID/status)"
  echo
  echo "Trees from make-trees.sh: v1 $(commas "$(du -sb "$TD/trees/v1" | cut -f1)") B / $(commas "$(tree_files "$TD/trees/v1")") files; v2 $(commas "$(du -sb "$TD/trees/v2" | cut -f1)") B / $(commas "$(tree_files "$TD/trees/v2")") files."
  echo
  echo "The goal applies to VmRSS when idle and to VmHWM (the peak) while installing or updating."
  echo
  echo "| state | VmRSS MiB | VmHWM MiB | goal MiB | measured / goal | met | note |"
  echo "| --- | ---: | ---: | ---: | ---: | --- | --- |"
  echo "| idle: restarted, up to date on v1, in its long poll | $IDLE_RSS | $IDLE_HWM | ≤ $GOAL_IDLE_MIB | $(ratio "$IDLE_RSS" "$GOAL_IDLE_MIB") | $(yes_no "$IDLE_RSS" "$GOAL_IDLE_MIB" le) | VmHWM: its peak since the start |"
  echo "| first install of v1 (enrolled, nothing deployed before) | $INSTALL_RSS_END | $INSTALL_HWM | ≤ $GOAL_UPDATE_MIB | $(ratio "$INSTALL_HWM" "$GOAL_UPDATE_MIB") | $(yes_no "$INSTALL_HWM" "$GOAL_UPDATE_MIB" le) | ${INSTALL_S} s from assign to updated (polled every 0.2 s); RSS ${ENROLLED_RSS} MiB before |"
  echo "| update v1 → v2 (the idle process above) | $AFTER_RSS | $UPDATE_HWM | ≤ $GOAL_UPDATE_MIB | $(ratio "$UPDATE_HWM" "$GOAL_UPDATE_MIB") | $(yes_no "$UPDATE_HWM" "$GOAL_UPDATE_MIB" le) | ${UPDATE_S} s from commit and publish of v2 to updated; RSS 10 s after it |"
  echo "| \`agent verify\` of v2 (own process, /usr/bin/time) | | $(mib "$VERIFY_KIB") | | | | ${VERIFY_S} s |"
  echo
  echo "- VmRSS of the install and update rows: right after the server saw the machine updated (install) and 10 s later (update). The agent fetched $(commas "${FETCHED:-0}") B in all."
fi
if [ ${#FAILED[@]} -gt 0 ]; then
  echo
  echo "**Failed run:** $(printf '%s; ' "${FAILED[@]}" | sed 's/; $//')"
  exit 1
fi
