#!/usr/bin/env bash
# Delta benchmark: the bytes a machine downloads to go from one Debian tree to the next with
# semithin's delta packs, side by side with every peer of the shared benchmark, plus the time to
# build the delta on the server and to apply it on the machine. Two updates of real trees from
# shared/bench/make-trees.sh: v1 -> v2 (a security update) and v2 -> v3 (programs added).
# Goals (from the issue): semithin downloads the fewest bytes on both updates; applying takes
# <= 2 s; building the pack takes no longer than `zstd -19 --long=31 --patch-from` over the tars.
#
# Usage: bench/delta.sh [WORK_DIR]      (as root; see bench/README.md)
#
#   WORK_DIR       the benchmark directory (BENCH_DIR of the shared scripts): trees, tars, the
#                  peers' files and results.tsv; kept afterwards. A directory that already holds
#                  the trees (make-trees.sh skips finished steps) saves the debootstrap. Default:
#                  a new temporary directory, removed at the end.
# Environment:
#   SHARED_BENCH   the shared benchmark scripts (default <this repo>/../shared/bench)
#   SEMITHIN       a semithin binary to use instead of `cargo build --release -p semithin`
#   PEER_STEPS     the peer scripts to run (default: 30-full-images 40-bindelta 41-bsdiff
#                  50-rsync 60-casync 70-ostree 80-zsync-bita); a shorter list for a quick run
#   WAIT_IDLE_MAX  seconds to wait for other processes' CPU load to end before each timed
#                  command (default 60; the peers' lib.sh reads it too)
#
# How semithin is measured: the real path of a machine. `semithin serve` on a free loopback port
# with its own data dir; v1 is committed into its repository and published; one agent enrolls
# with a preauthorised token, is assigned the channel and installs v1 (`agent --once`). Then v2
# is committed and published; the server builds the pack DATA/deltas/V1-V2.pack at publish; once
# it (and every other pack the publish started) is there, `agent --once` updates the machine.
# Bytes downloaded = the growth of the server's counters (GET /api/v1/admin/stats:
# object_bytes_sent + metadata_bytes_sent + delta_bytes_sent) over that run; apply time = the
# agent's log line "applied the delta pack ... in S s"; build time = `build_secs` of
# `semithin delta V1 V2 --json --out FILE` on the server's repository (its `total_bytes` must
# equal the served pack's size, and FILE must be the same bytes). The deployment is compared
# with the tree (diff -r --no-dereference; owners, modes, mtimes, link targets, device numbers).
# Then the same for v2 -> v3.
#
# The peers are the shared scripts themselves (shared/bench/peers/NN-*.sh with BENCH_DIR set),
# run in this same run; they record into WORK_DIR/results.tsv (an older one is kept as
# results.tsv.before-DATE). Their timed commands run under lib.sh `t`, which logs a run as
# CONTENDED when other processes used more than 0.3 core meanwhile; those notes are carried into
# the table (semithin's timings are judged the same way, its own server's CPU not counted).
#
# Prints a markdown section and writes it into bench/RESULTS.md, replacing the previous one of
# this benchmark (from "# semithin delta benchmark" to the next "# " heading) and keeping the
# other sections. Exits non-zero if semithin failed, a deployment differs from its tree, or a
# peer step failed (the report then says which).
set -euo pipefail

CMDLINE=
for var in SHARED_BENCH SEMITHIN PEER_STEPS WAIT_IDLE_MAX; do
  if [ -n "${!var+x}" ]; then CMDLINE+="$var=$(printf '%q' "${!var}") "; fi
done
CMDLINE+=$(printf '%q' "$0")
for a in "$@"; do CMDLINE+=" $(printf '%q' "$a")"; done

die() {
  printf 'delta: error: %s\n' "$*" >&2
  exit 1
}
say() { printf '== %s\n' "$*" >&2; }

case ${1:-} in
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  -*) die "unknown option $1 (see --help)" ;;
esac
[ $# -le 1 ] || die "usage: $0 [WORK_DIR]"
[ "$(id -u)" -eq 0 ] || die "must be run as root (the trees keep real owners and device nodes)"

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/common.sh
. "$SCRIPT_DIR/common.sh"
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
SHARED=${SHARED_BENCH:-$SCRIPT_DIR/../../shared/bench}
[ -f "$SHARED/make-trees.sh" ] && [ -f "$SHARED/peers/lib.sh" ] ||
  die "no make-trees.sh and peers/lib.sh in $SHARED (set SHARED_BENCH)"
SHARED=$(cd "$SHARED" && pwd)
PEERS=$SHARED/peers
RESULTS=$SCRIPT_DIR/RESULTS.md
export WAIT_IDLE_MAX=${WAIT_IDLE_MAX:-60}
ALL_STEPS="30-full-images 40-bindelta 41-bsdiff 50-rsync 60-casync 70-ostree 80-zsync-bita"
read -r -a STEPS <<<"${PEER_STEPS-$ALL_STEPS}"
for s in "${STEPS[@]}"; do [ -f "$PEERS/$s.sh" ] || die "no peer script $PEERS/$s.sh"; done

# --- tools (installed only when missing) -------------------------------------------------------
declare -A PKG=([curl]=curl [bc]=bc [python3]=python3 [zstd]=zstd [tar]=tar [diff]=diffutils)
for s in "${STEPS[@]}"; do
  case $s in
    30-full-images) PKG[mksquashfs]=squashfs-tools PKG[mkfs.erofs]=erofs-utils ;;
    40-bindelta) PKG[xdelta3]=xdelta3 ;;
    41-bsdiff) PKG[bsdiff]=bsdiff ;;
    50-rsync) PKG[rsync]=rsync ;;
    60-casync) PKG[casync]=casync ;;
    70-ostree) PKG[ostree]=ostree ;;
    80-zsync-bita) PKG[zsync]=zsync PKG[zsyncmake]=zsync ;;
  esac
done
need=()
for c in "${!PKG[@]}"; do command -v "$c" >/dev/null || need+=("${PKG[$c]}"); done
[ -x /usr/bin/time ] || need+=(time)
if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  say "apt-get install ${need[*]}"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"; } >&2 ||
    die "could not install ${need[*]}"
fi
export PATH=$PATH:$HOME/.cargo/bin
if [[ " ${STEPS[*]} " == *" 80-zsync-bita "* ]] && ! command -v bita >/dev/null; then
  say "cargo install bita"
  cargo install bita >&2 || die "cargo install bita failed"
fi

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

# --- work dir, processes, cleanup --------------------------------------------------------------
if [ -n "${1:-}" ]; then
  mkdir -p "$1"
  WD=$(cd "$1" && pwd)
  REMOVE_WD=0
else
  WD=$(mktemp -d "${TMPDIR:-/tmp}/semithin-delta.XXXXXX")
  REMOVE_WD=1
fi
PIDS=()
stop_pid() { # stop_pid PID: SIGTERM to it (and its process group if it leads one), 10 s, SIGKILL
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [ "$REMOVE_WD" = 1 ]; then rm -rf "$WD"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- trees -------------------------------------------------------------------------------------
export BENCH_DIR=$WD
TREES_BEFORE=no
[ -e "$WD/trees/.v3.done" ] && [ -f "$WD/v3.tar" ] && TREES_BEFORE=yes
say "trees: make-trees.sh $WD (skips finished steps; debootstrap needs the Debian mirror)"
bash "$SHARED/make-trees.sh" "$WD" >&2 || die "make-trees.sh failed"
for v in v1 v2 v3; do
  [ -d "$WD/trees/$v" ] && [ -f "$WD/$v.tar" ] || die "$WD/trees/$v or $WD/$v.tar missing after make-trees.sh"
done

# this run's results.tsv and contention notes start empty; earlier ones are kept beside them
mkdir -p "$WD/logs"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
if [ -f "$WD/results.tsv" ] && [ "$(wc -l <"$WD/results.tsv")" -gt 1 ]; then
  mv "$WD/results.tsv" "$WD/results.tsv.before-$STAMP"
  say "kept the earlier results as $WD/results.tsv.before-$STAMP"
fi
CONT_FILE=$WD/logs/contention.txt NOTES_FILE=$WD/logs/notes.txt
touch "$CONT_FILE" "$NOTES_FILE"
CONT_FROM=$(($(wc -l <"$CONT_FILE") + 1)) NOTES_FROM=$(($(wc -l <"$NOTES_FILE") + 1))

# the peers' helpers: record, wait_idle, t (sets B, RES and W for their own use)
# shellcheck source=/dev/null
source "$PEERS/lib.sh"

S=$WD/semithin-delta
rm -rf "$S"
mkdir -p "$S/home" "$S/logs"
DATA=$S/data STATE=$S/agent CH=bench/stable NAME=bench

json_field() { # json_field KEY < JSON: the first value of KEY (string or number)
  grep -o "\"$1\"[[:space:]]*:[[:space:]]*\"\{0,1\}[^,}\"]*" | head -n 1 | sed 's/^[^:]*:[[:space:]]*"\{0,1\}//'
}
commas() { sed -e ':a' -e 's/\([0-9]\)\([0-9]\{3\}\)\($\|[^0-9]\)/\1,\2\3/' -e 'ta' <<<"$1"; }
isnum() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }
ratio() { if isnum "$1" && isnum "$2" && [ "$2" != 0 ]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; else echo "n/a"; fi; }
wait_for() { # wait_for WHAT SECS CMD...: until CMD succeeds
  local what=$1 secs=$2 end
  shift 2
  end=$((SECONDS + secs))
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || die "$what: not within $secs s"
    sleep 0.2
  done
}

# semithin with nothing of the caller's settings (HOME is ours); adm: as this server's admin
ST=(env -u SEMITHIN_SERVER -u SEMITHIN_ADMIN_TOKEN -u SEMITHIN_ADMIN_CONFIG -u SEMITHIN_REPO
  -u SEMITHIN_CONFIG -u SEMITHIN_STATE -u SEMITHIN_DATA -u SEMITHIN_LOG HOME="$S/home" "$BIN")
adm() { "${ST[@]:0:${#ST[@]}-1}" SEMITHIN_SERVER="$URL" SEMITHIN_ADMIN_TOKEN="$TOKEN" "$BIN" "$@"; }

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
say "semithin: serve --data $DATA on $URL"
"${ST[@]}" serve --data "$DATA" --listen "127.0.0.1:$PORT" --delta-sources 3 </dev/null >"$S/logs/server.log" 2>&1 &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
server_up() {
  kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited; see $S/logs/server.log"
  curl -sf "$URL/api/v1/health" >/dev/null 2>&1
}
wait_for "the server answering" 60 server_up
TOKEN=$(cat "$DATA/admin-token")
stats() { curl -sf --max-time 10 -H "Authorization: Bearer $TOKEN" "$URL/api/v1/admin/stats"; }
sent() { # sent STATS_JSON -> "objects metadata delta"
  echo "$(json_field object_bytes_sent <<<"$1") $(json_field metadata_bytes_sent <<<"$1") $(json_field delta_bytes_sent <<<"$1")"
}

release() { # release vN -> commit id (committed on CH in the server's repository and published)
  local id
  id=$(adm --repo "$DATA/repo" commit --channel "$CH" --json "$WD/trees/$1" 2>>"$S/logs/admin.log" | json_field commit)
  [ -n "$id" ] || die "commit of $1 failed; see $S/logs/admin.log"
  adm --repo "$DATA/repo" publish "$CH" >>"$S/logs/admin.log" 2>&1 || die "publish of $1 failed; see $S/logs/admin.log"
  echo "$id"
}
agent_cmd() { # the command of one agent run (at most 30 minutes)
  AGENT=(timeout 1800 "${ST[@]}" agent --state "$STATE" --server "$URL" --token "$ENROLL"
    --name "$NAME" --trusted-root "$DATA/repo/trust/metadata/1.root.json" --verify-interval 0 --once)
}
agent_once() { # agent_once LOG
  agent_cmd
  "${AGENT[@]}" </dev/null >"$1" 2>&1
}
current() { basename "$(readlink "$STATE/current" 2>/dev/null)" 2>/dev/null || true; }
deployment() { readlink -f "$STATE/current"; }

# own_t OUT ERR CMD...: lib.sh's t for a semithin command (stdout to OUT, stderr to ERR), except
# that the CPU time of our own server is not counted as another process's. Sets T (wall
# seconds), CONT and CPU_OTHER.
cpu_ticks() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return 0; }
  s=${s##*) }
  awk '{ print $12 + $13 }' <<<"$s"
}
own_t() {
  local out=$1 err=$2 tf=$S/time.tmp rc=0 a b srv0 srv1 U S_ busy own other lim
  shift 2
  wait_idle >&2
  srv0=$(cpu_ticks "$SERVER_PID")
  read -r -a a < <(head -n 1 /proc/stat)
  /usr/bin/time -f '%e %M %U %S' -o "$tf" "$@" </dev/null >"$out" 2>"$err" || rc=$?
  read -r -a b < <(head -n 1 /proc/stat)
  srv1=$(cpu_ticks "$SERVER_PID")
  read -r T _ U S_ < <(tail -n 1 "$tf")
  busy=$(((b[1] + b[2] + b[3] + b[6] + b[7] + b[8]) - (a[1] + a[2] + a[3] + a[6] + a[7] + a[8])))
  own=$(awk -v u="$U" -v s="$S_" 'BEGIN { printf "%d", (u + s) * 100 }')
  other=$((busy - own - (srv1 - srv0) * 100 / $(getconf CLK_TCK)))
  [ "$other" -ge 0 ] || other=0
  lim=$(awk -v t="$T" 'BEGIN { printf "%d", t * 30 }')
  CPU_OTHER=$(awk -v o="$other" 'BEGIN { printf "%.1f", o / 100 }')
  CONT=
  if [ "$other" -gt "$lim" ] && [ "$other" -gt 50 ]; then
    CONT="CONTENDED: other processes used $CPU_OTHER CPU-s during this ${T}s run"
    echo "CONTENDED: $* : wall=${T}s own_cpu=${own}j foreign_or_child_cpu=${other}j" >>"$CONT_FILE"
  fi
  return "$rc"
}

# same_tree TREE DEPLOYMENT: "identical" or what differs (diff -r --no-dereference; then names,
# types, owners, modes, mtimes of all but directories, link targets, sizes, device numbers)
listing() {
  (cd "$1" && find . -printf '%p|%y|%U|%G|%m|%T@|%l|%s\n' |
    awk -F'|' -v OFS='|' '$2 == "d" { $6 = ""; $8 = "" } { print }' | LC_ALL=C sort
    find . \( -type c -o -type b \) -exec stat -c '%n|rdev|%t:%T' {} + | LC_ALL=C sort)
}
same_tree() {
  local d
  # diff cannot compare device nodes and says so for each pair; their numbers are in the listing
  d=$(diff -r --no-dereference "$1" "$2" 2>&1 |
    grep -Ev '^File .* is a (character|block) special file while file .* is a (character|block) special file$' || true)
  if [ -n "$d" ]; then
    printf 'DIFFERENT (diff -r: %s)' "$(head -n 3 <<<"$d" | tr '\n' ' ')"
    return
  fi
  d=$(diff <(listing "$1") <(listing "$2") || true)
  if [ -n "$d" ]; then
    printf 'DIFFERENT (%s lines of the listing differ, e.g. %s)' "$(grep -c '^[<>]' <<<"$d")" \
      "$(grep -m 2 '^[<>]' <<<"$d" | tr '\n' ' ')"
    return
  fi
  echo identical
}

# --- semithin: install v1, then update v1 -> v2 -> v3 through the server ----------------------
say "semithin: commit and publish v1; an agent enrolls and installs it"
declare -A REL
REL[v1]=$(release v1)
ENROLL=$(adm fleet token create --preauthorized --json 2>>"$S/logs/admin.log" | json_field token)
[ -n "$ENROLL" ] || die "no enrollment token; see $S/logs/admin.log"
agent_once "$S/logs/agent-enroll.log" || die "the agent's first run failed; see $S/logs/agent-enroll.log"
adm fleet assign "$NAME" "$CH" >>"$S/logs/admin.log" 2>&1 || die "fleet assign failed; see $S/logs/admin.log"
agent_once "$S/logs/agent-install-v1.log" || die "the agent's install of v1 failed; see $S/logs/agent-install-v1.log"
[ "$(current)" = "${REL[v1]}" ] || die "after installing, the agent runs '$(current)', not v1 ${REL[v1]}"
SAME_V1=$(same_tree "$WD/trees/v1" "$(deployment)")

declare -A PUBLISH_OTHER PUBLISH_SRV_CPU
declare -A DL DL_OBJ DL_META DL_DELTA PACK SRV_BUILD APPLY_S APPLY_LOG_BYTES ONCE_S ONCE_CONT \
  BUILD_S BUILD_CONT BUILD_OTHER J_META J_PATCH J_NEW J_TOTAL J_FILES SAME CLI_SAME OTHER_PACKS
SEMITHIN_FAILED=()
UPDATES=(v1-v2 v2-v3)
prev=v1
for new in v2 v3; do
  u=$prev-$new
  say "semithin: commit and publish $new; wait for the pack built at publish"
  REL[$new]=$(release "$new")
  from=${REL[$prev]} to=${REL[$new]}
  pack=$DATA/deltas/$from-$to.pack
  # every pack the publish started (from up to 3 earlier releases), so none is built meanwhile
  packs_ready() {
    local v
    for v in "${!REL[@]}"; do
      [ "$v" = "$new" ] || [ -f "$DATA/deltas/${REL[$v]}-$to.pack" ] || return 1
    done
    ! compgen -G "$DATA/deltas/.*.tmp" >/dev/null
  }
  # how busy the machine was meanwhile, besides the server (its build at publish is in its log)
  srv0=$(cpu_ticks "$SERVER_PID")
  read -r -a j0 < <(head -n 1 /proc/stat)
  wait_for "the delta packs to $new built at publish" 1800 packs_ready
  read -r -a j1 < <(head -n 1 /proc/stat)
  srv1=$(cpu_ticks "$SERVER_PID")
  PUBLISH_OTHER[$u]=$(awk -v b=$(((j1[1] + j1[2] + j1[3] + j1[6] + j1[7] + j1[8]) - (j0[1] + j0[2] + j0[3] + j0[6] + j0[7] + j0[8]))) \
    -v s=$((srv1 - srv0)) -v hz="$(getconf CLK_TCK)" 'BEGIN { o = b / 100 - s / hz; printf "%.1f", o < 0 ? 0 : o }')
  PUBLISH_SRV_CPU[$u]=$(awk -v s=$((srv1 - srv0)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", s / hz }')
  PACK[$u]=$(stat -c %s "$pack")
  OTHER_PACKS[$u]=
  for v in "${!REL[@]}"; do
    if [ "$v" != "$new" ] && [ "$v" != "$prev" ]; then
      OTHER_PACKS[$u]+="$v→$new $(commas "$(stat -c %s "$DATA/deltas/${REL[$v]}-$to.pack")") B; "
    fi
  done
  SRV_BUILD[$u]=$(grep 'delta pack built' "$S/logs/server.log" | grep "from=${from:0:12}" | grep "to=${to:0:12}" |
    sed -n 's/.*secs=\([0-9.]*\).*/\1/p' | tail -n 1 || true)
  [ -z "${SRV_BUILD[$u]}" ] || SRV_BUILD[$u]=$(printf '%.2f' "${SRV_BUILD[$u]}")

  say "semithin: agent --once, $prev -> $new"
  read -r o0 m0 d0 < <(sent "$(stats)")
  agent_cmd
  own_t "$S/logs/agent-$u.log" "$S/logs/agent-$u.log" "${AGENT[@]}" || die "the agent's update $u failed; see $S/logs/agent-$u.log"
  ONCE_S[$u]=$T ONCE_CONT[$u]=$CONT
  read -r o1 m1 d1 < <(sent "$(stats)")
  DL_OBJ[$u]=$((o1 - o0)) DL_META[$u]=$((m1 - m0)) DL_DELTA[$u]=$((d1 - d0))
  DL[$u]=$((DL_OBJ[$u] + DL_META[$u] + DL_DELTA[$u]))
  [ "$(current)" = "$to" ] || die "after the update the agent runs '$(current)', not $new $to; see $S/logs/agent-$u.log"
  line=$(grep 'applied the delta pack' "$S/logs/agent-$u.log" | tail -n 1) ||
    die "the agent did not apply a delta pack for $u; see $S/logs/agent-$u.log"
  APPLY_LOG_BYTES[$u]=$(sed -n 's/.*applied the delta pack [^ ]* -> [^ ]* (\([0-9]*\) bytes).*/\1/p' <<<"$line")
  APPLY_S[$u]=$(sed -n 's/.*bytes) in \([0-9.]*\) s.*/\1/p' <<<"$line")
  SAME[$u]=$(same_tree "$WD/trees/$new" "$(deployment)")
  [ "${SAME[$u]}" = identical ] || SEMITHIN_FAILED+=("the $new deployment differs from its tree")

  say "semithin: delta $prev $new --json (the build, measured on its own)"
  own_t "$S/logs/delta-$u.json" "$S/logs/delta-$u.err" \
    "${ST[@]}" --repo "$DATA/repo" delta "$from" "$to" --json --out "$S/cli-$u.pack" ||
    die "semithin delta $u failed: $(cat "$S/logs/delta-$u.err")"
  BUILD_CONT[$u]=$CONT BUILD_OTHER[$u]=$CPU_OTHER
  BUILD_S[$u]=$(printf '%.2f' "$(json_field build_secs <"$S/logs/delta-$u.json")")
  J_TOTAL[$u]=$(json_field total_bytes <"$S/logs/delta-$u.json")
  J_META[$u]=$(json_field metadata_bytes <"$S/logs/delta-$u.json")
  J_PATCH[$u]=$(json_field patch_bytes <"$S/logs/delta-$u.json")
  J_NEW[$u]=$(json_field new_bytes <"$S/logs/delta-$u.json")
  jf() { commas "$(json_field "$1" <"$S/logs/delta-$u.json")"; }
  J_FILES[$u]="changed files: $(jf files_prefixed) patched by zstd against their old version, $(jf files_bsdiff) by bsdiff, $(jf files_gzip) gzip files as their uncompressed content; $(jf files_new) new files; $(jf trees) trees; $(jf content_bytes) B of file content rebuilt"
  [ "${J_TOTAL[$u]}" = "${PACK[$u]}" ] ||
    SEMITHIN_FAILED+=("delta --json total_bytes ${J_TOTAL[$u]} differs from the served pack's ${PACK[$u]} B ($u)")
  if cmp -s "$S/cli-$u.pack" "$pack"; then CLI_SAME[$u]=yes; else
    CLI_SAME[$u]=no
    SEMITHIN_FAILED+=("the pack of delta --out differs from the served one ($u)")
  fi
  rm -f "$S/cli-$u.pack"
  [ "${APPLY_LOG_BYTES[$u]}" = "${PACK[$u]}" ] ||
    SEMITHIN_FAILED+=("the agent applied ${APPLY_LOG_BYTES[$u]} B, the pack has ${PACK[$u]} B ($u)")
  record "semithin delta pack (agent via semithin serve)" "$u" "${DL[$u]}" "${BUILD_S[$u]}" "${APPLY_S[$u]}" \
    "pack ${PACK[$u]} B; TUF metadata ${DL_META[$u]} B; objects ${DL_OBJ[$u]} B; delta ${DL_DELTA[$u]} B" >&2
  prev=$new
done
stop_pid "$SERVER_PID"

# --- peers -------------------------------------------------------------------------------------
declare -A STEP_RC STEP_S
PEER_FAILED=()
for s in "${STEPS[@]}"; do
  say "peers: $s (log: $WD/logs/delta-bench-$s.log)"
  t0=$SECONDS
  # its own process group, so that the daemons and servers it starts go with it
  setsid timeout 7200 bash "$PEERS/$s.sh" </dev/null >"$WD/logs/delta-bench-$s.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  rc=0
  wait "$pid" || rc=$?
  STEP_RC[$s]=$rc STEP_S[$s]=$((SECONDS - t0))
  [ "$rc" = 0 ] || PEER_FAILED+=("$s exited with status $rc (see logs/delta-bench-$s.log)")
  grep -h '^RESULT:' "$WD/logs/delta-bench-$s.log" >&2 || PEER_FAILED+=("$s recorded nothing")
done

# --- contention notes for a results.tsv row ----------------------------------------------------
# The patterns (substrings of the timed command, all of which must occur) name, for each peer
# row, the commands whose times it reports, as the shared scripts run them.
ostree_commit_of() { sed -n "s/^$1 commit=\([0-9a-f]*\) .*/\1/p" "$WD/ostree/summary.txt" 2>/dev/null | tail -n 1 || true; }
row_patterns() { # row_patterns METHOD UPDATE CREATE APPLY -> lines "create|apply<TAB>pat&&pat[&&@wall]"
  local m=$1 o=${2%-*} n=${2#*-} ap=$4 sub lvl co cn
  case $m in
    "full tar.zst"*) printf 'create\t-o images/%s.tar.zst\napply\t-c images/%s.tar.zst\n' "$n" "$n" ;;
    "full squashfs zstd(15)"*) printf 'create\timages/%s.sqfs.zstd -comp\n' "$n" ;;
    "full squashfs zstd(22)"*) printf 'create\timages/%s.sqfs.zstd22 \n' "$n" ;;
    "full squashfs xz"*) printf 'create\timages/%s.sqfs.xz \n' "$n" ;;
    "full erofs lz4hc"*) printf 'create\timages/%s.erofs.lz4hc\n' "$n" ;;
    "full erofs lzma"*) printf 'create\timages/%s.erofs.lzma\n' "$n" ;;
    "zstd -19 --long=31 --patch-from"*)
      printf 'create\t--patch-from=%s.tar %s.tar -o deltas/%s-%s.zst-patch\n' "$o" "$n" "$o" "$n"
      printf 'apply\t-d --long=31 --patch-from=%s.tar deltas/%s-%s.zst-patch\n' "$o" "$o" "$n" ;;
    xdelta3*) printf 'create\txdelta3 -e&&deltas/%s-%s.xd3\napply\txdelta3 -d&&deltas/%s-%s.xd3\n' "$o" "$n" "$o" "$n" ;;
    bsdiff*) printf 'create\tbsdiff %s.tar %s.tar\napply\tbspatch %s.tar&&deltas/%s-%s.bsdiff\n' "$o" "$n" "$o" "$o" "$n" ;;
    "rsync -aH -z"*) printf 'apply\trsync -aH -z &&trees/%s/ rsync://\n' "$n" ;;
    "rsync -aH"*) printf 'apply\trsync -aH --numeric-ids&&trees/%s/ rsync://\n' "$n" ;;
    casync*)
      case $m in *16K*) sub=dir16 ;; *blob*) sub=blob64 ;; *) sub=dir64 ;; esac
      printf 'create\tcasync make&&casync/%s/%s.ca\napply\tcasync extract&&casync/%s/%s.ca\n' "$sub" "$n" "$sub" "$n" ;;
    ostree*)
      co=$(ostree_commit_of "$o") cn=$(ostree_commit_of "$n")
      printf 'create\tostree&& commit &&--tree=dir=trees/%s\n' "$n"
      case $m in *static-delta* | *"via static delta"*)
        printf 'create\tstatic-delta generate --from=%s --to=%s\n' "${co:-?}" "${cn:-?}" ;;
      esac
      case $m in
        *apply-offline*) printf 'apply\tapply-offline ostree/%s-%s.delta\n' "$o" "$n" ;;
        *object-wise*) printf 'apply\tpull --disable-static-deltas origin os&&@%s\n' "$ap" ;;
        *"via static delta"*) printf 'apply\tostree-client-deltas pull origin os&&@%s\n' "$ap" ;;
      esac ;;
    zsync*) printf 'create\tzsyncmake&&zsync/%s.tar.zsync\napply\tzsync -q -i&&zs-%s.tar\n' "$n" "$n" ;;
    bita*)
      lvl=$(sed -n 's/.*brotli-\([0-9]*\).*/\1/p' <<<"$m")
      printf 'create\tbita compress&&bita/%s-l%s.cba\napply\tbita clone&&bita/%s-l%s.cba\n' "$n" "$lvl" "$n" "$lvl" ;;
    semithin*) ;; # measured by own_t above
  esac
}
contention() { # contention METHOD UPDATE CREATE APPLY -> "create: X CPU-s of others in Y s; ..."
  local what pats out=
  while IFS=$'\t' read -r what pats; do
    [ -n "$what" ] || continue
    hit=$(tail -n +"$CONT_FROM" "$CONT_FILE" | awk -v pats="$pats" '
      { n = split(pats, p, "&&"); ok = 1
        for (i = 1; i <= n; i++) {
          if (substr(p[i], 1, 1) == "@") { if (index($0, "wall=" substr(p[i], 2) "s ") == 0) ok = 0 }
          else if (index($0, p[i]) == 0) ok = 0 }
        if (ok) { w = $0; sub(/.* : wall=/, "", w); sub(/s own_cpu.*/, "", w)
                  f = $0; sub(/.*foreign_or_child_cpu=/, "", f); sub(/j.*/, "", f)
                  printf "%.1f CPU-s of other processes in a %s s run\n", f / 100, w; exit } }' || true)
    [ -z "$hit" ] || out+="$what: $hit; "
  done < <(row_patterns "$@")
  printf '%s' "${out%; }"
}

# --- report ------------------------------------------------------------------------------------
pkgver() { dpkg-query -W -f '${Version}' "$1" 2>/dev/null || echo '?'; }
cell() { if isnum "$1"; then commas "$1"; else echo "${1:-}"; fi; }
md() { sed 's/|/\\|/g' <<<"$1"; }
short_note() { # the peers' notes without bita's long log excerpt
  sed 's/; report: .*//' <<<"$1"
}
declare -A SMALLEST_OTHER SMALLEST_OTHER_BYTES ZSTD_CREATE ZSTD_CONT
table() { # table UPDATE
  local u=$1 base=${DL[$1]} rows
  echo "| # | method | bytes downloaded | / semithin | create s | apply s | note |"
  echo "| ---: | --- | ---: | ---: | ---: | ---: | --- |"
  rows=$(awk -F'\t' -v u="$u" 'NR > 1 && $2 == u' "$RES" |
    awk -F'\t' -v OFS='\t' '{ k = ($3 ~ /^[0-9]+$/) ? $3 : 1e18; print k, $0 }' | sort -t $'\t' -k1,1g | cut -f2-)
  local i=0 m up b c a note cont
  while IFS=$'\t' read -r m up b c a note; do
    i=$((i + 1))
    if [[ $m == semithin* ]]; then
      cont=
      [ -z "${BUILD_CONT[$u]}" ] || cont+="build: ${BUILD_OTHER[$u]} CPU-s of other processes in a ${BUILD_S[$u]} s run; "
      [ -z "${ONCE_CONT[$u]}" ] || cont+="the agent run (download, apply, checkout, switch): ${ONCE_CONT[$u]#CONTENDED: }; "
      cont=${cont%; }
      note="the real path (server counters over one agent --once); create = \`semithin delta --json\` build_secs, apply = the agent's log"
      echo "| $i | **semithin delta pack** (agent via \`semithin serve\`) | **$(commas "$b")** | 1.00 | $c | $a | $note${cont:+; **contended**: $cont} |"
    else
      cont=$(contention "$m" "$up" "$c" "$a")
      if [ -z "${SMALLEST_OTHER[$u]:-}" ] && isnum "$b"; then SMALLEST_OTHER[$u]=$m SMALLEST_OTHER_BYTES[$u]=$b; fi
      if [[ $m == "zstd -19 --long=31 --patch-from"* ]]; then ZSTD_CREATE[$u]=$c ZSTD_CONT[$u]=$cont; fi
      echo "| $i | $(md "$m") | $(cell "$b") | $(ratio "$b" "$base") | $(cell "$c") | $(cell "$a") | $(md "$(short_note "$note")")${cont:+; **contended**: $(md "$cont")} |"
    fi
  done <<<"$rows"
}
yes_no() { if [ "$1" = 1 ]; then echo yes; else echo no; fi; }
le() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 <= b + 0) }'; }

report() {
  local u new title
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — delta: \`$CMDLINE\`"
  echo
  echo "- machine: $(nproc) cores ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r), $(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release)"
  echo "- semithin: $("$BIN" --version 2>/dev/null | head -n 1); $BIN_ORIGIN; server on loopback (HTTP), \`--delta-sources 3\` (the default)"
  echo "- peers (Debian packages unless said): casync $(pkgver casync), ostree $(pkgver ostree), zstd $(pkgver zstd), xdelta3 $(pkgver xdelta3), bsdiff $(pkgver bsdiff), rsync $(pkgver rsync), zsync $(pkgver zsync), squashfs-tools $(pkgver squashfs-tools), erofs-utils $(pkgver erofs-utils), $(bita --version 2>/dev/null | head -n 1 || echo 'bita ?') (cargo install)"
  echo "- peer steps run now, in this order, from shared/bench/peers: $(for s in "${STEPS[@]}"; do printf '%s (%s s, exit %s), ' "$s" "${STEP_S[$s]}" "${STEP_RC[$s]}"; done | sed 's/, $//')"
  echo "- trees (shared/bench/make-trees.sh; $([ "$TREES_BEFORE" = yes ] && echo 'already in the work dir, reused' || echo 'built by this run')): $(for v in v1 v2 v3; do printf '%s %s B / %s files; ' "$v" "$(commas "$(du -sb "$WD/trees/$v" | cut -f1)")" "$(commas "$(find "$WD/trees/$v" -type f | wc -l)")"; done | sed 's/; $//')"
  echo "- one run, each figure measured once: compare within this run only"
  echo
  echo "Bytes: semithin's are what its server sent the machine during the update (\`object_bytes_sent\`"
  echo "+ \`metadata_bytes_sent\` + \`delta_bytes_sent\` of /api/v1/admin/stats, after minus before one"
  echo "\`agent --once\`; the check-in's own JSON answer is not counted, nor HTTP headers). The peers'"
  echo "are as their scripts count them (see each note and shared/bench/README.md): files made, or"
  echo "bytes served over loopback. **create s**: semithin's is \`build_secs\` of \`semithin delta A B"
  echo "--json --out FILE\` on the server's repository; **apply s**: semithin's is the agent's log"
  echo "line \"applied the delta pack ... in S s\" (rebuilding and verifying every file and tree of"
  echo "the pack into the machine's store; the checkout of the deployment comes after it). Sorted by"
  echo "bytes. **contended**: lib.sh \`t\` found other processes using more than 0.3 core during"
  echo "that timed command (this machine is shared): such times are less reliable."
  for u in "${UPDATES[@]}"; do
    new=${u#*-}
    case $u in v1-v2) title="v1 → v2 (security update)" ;; *) title="v2 → v3 (programs added)" ;; esac
    echo
    echo "### $title"
    echo
    table "$u"
    echo
    echo "semithin, $title: $(commas "${DL[$u]}") B downloaded = delta pack $(commas "${DL_DELTA[$u]}") B + TUF metadata $(commas "${DL_META[$u]}") B + objects outside the pack $(commas "${DL_OBJ[$u]}") B."
    echo "The pack ($(commas "${PACK[$u]}") B, \`delta --json\` total_bytes $(commas "${J_TOTAL[$u]}"), \`--out\` byte-identical to the served pack: ${CLI_SAME[$u]}): metadata (header and trees) $(commas "${J_META[$u]}") B, patches $(commas "${J_PATCH[$u]}") B, new content $(commas "${J_NEW[$u]}") B; ${J_FILES[$u]}."
    echo "Built at publish by the server in ${SRV_BUILD[$u]:-?} s (its log; server ${PUBLISH_SRV_CPU[$u]} CPU-s, other processes ${PUBLISH_OTHER[$u]} CPU-s from publish until all its packs were written), by \`semithin delta\` in ${BUILD_S[$u]} s; applied in ${APPLY_S[$u]} s; the whole \`agent --once\` (check-in, TUF, download, apply, checkout, switch, report) took ${ONCE_S[$u]} s${ONCE_CONT[$u]:+ (${ONCE_CONT[$u]})}. The deployment is ${SAME[$u]} to trees/$new.${OTHER_PACKS[$u]:+ Also built at this publish: ${OTHER_PACKS[$u]%; }.}"
  done
  echo
  echo "### Goals"
  echo
  echo "| goal | v1 → v2 | v2 → v3 | met |"
  echo "| --- | --- | --- | --- |"
  local ok_s=1 ok_a=1 ok_b=1
  for u in "${UPDATES[@]}"; do
    [ "${DL[$u]}" -lt "${SMALLEST_OTHER_BYTES[$u]:-1}" ] || ok_s=0
    le "${APPLY_S[$u]}" 2 || ok_a=0
    le "${BUILD_S[$u]}" "${ZSTD_CREATE[$u]:-0}" || ok_b=0
  done
  smallest() { echo "semithin $(commas "${DL[$1]}") B; next: $(md "${SMALLEST_OTHER[$1]:-none}") $(commas "${SMALLEST_OTHER_BYTES[$1]:-?}") B ($(ratio "${SMALLEST_OTHER_BYTES[$1]:-}" "${DL[$1]}") × semithin)"; }
  echo "| semithin downloads the fewest bytes | $(smallest v1-v2) | $(smallest v2-v3) | $(yes_no $ok_s) |"
  echo "| apply ≤ 2 s | ${APPLY_S[v1-v2]} s | ${APPLY_S[v2-v3]} s | $(yes_no $ok_a) |"
  build() { echo "${BUILD_S[$1]} s vs ${ZSTD_CREATE[$1]:-?} s ($(ratio "${BUILD_S[$1]}" "${ZSTD_CREATE[$1]:-}") ×)${BUILD_CONT[$1]:+; build contended}${ZSTD_CONT[$1]:+; zstd contended}"; }
  echo "| pack build ≤ \`zstd -19 --long=31 --patch-from\` create (same run) | $(build v1-v2) | $(build v2-v3) | $(yes_no $ok_b) |"
  echo
  local gave_up
  gave_up=$(tail -n +"$NOTES_FROM" "$NOTES_FILE" | grep -c 'gave up' || true)
  echo "- semithin is the smallest on both updates: $(yes_no $ok_s). Apply ≤ 2 s on both: $(yes_no $ok_a). Pack build ≤ the zstd --patch-from create time on both: $(yes_no $ok_b)."
  echo "- contention: $(($(wc -l <"$CONT_FILE") - CONT_FROM + 1)) timed commands of this run were CONTENDED (logs/contention.txt); $gave_up times wait_idle gave up waiting (WAIT_IDLE_MAX=${WAIT_IDLE_MAX} s) and measured on a busy machine."
  echo "- v1 as first installed by the agent: ${SAME_V1} to trees/v1."
  if [ ${#PEER_FAILED[@]} -gt 0 ] || [ ${#SEMITHIN_FAILED[@]} -gt 0 ]; then
    echo
    echo "**Failed:** $(printf '%s; ' "${SEMITHIN_FAILED[@]}" "${PEER_FAILED[@]}" | sed 's/^; //; s/; $//')"
  fi
}

say "writing the report"
OUT=$S/section.md
{
  echo "# semithin delta benchmark: bytes to update a machine"
  echo
  echo "Written by \`bench/delta.sh\` (see its header and bench/README.md); each run replaces this part."
  echo
  report
} >"$OUT"
cat "$OUT"
replace_section "$RESULTS" "$OUT" "# semithin delta benchmark" "$S"
say "bench/RESULTS.md updated"

if [ ${#SEMITHIN_FAILED[@]} -gt 0 ] || [ ${#PEER_FAILED[@]} -gt 0 ]; then
  die "failed: $(printf '%s; ' "${SEMITHIN_FAILED[@]}" "${PEER_FAILED[@]}" | sed 's/^; //; s/; $//')"
fi
