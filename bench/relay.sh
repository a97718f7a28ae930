#!/usr/bin/env bash
# Root egress per update with and without relays, in one run, and a Markdown section for
# bench/RESULTS.md. Goal (issue 14): root egress <= 1.1 x the update per relay.
#
# One server on loopback, an image of FILES small files and a BIG-byte random file (v1), then v2
# with every file changed (a full delta of about the image's size). Two fleets of MACHINES agents
# each, one after the other, on fresh servers:
#   direct  every agent talks to the server;
#   relays  RELAYS relays under the server (`semithin relay`), the agents spread over them.
# For each, the bytes of content the server sent (objects + delta packs, /api/v1/admin/stats)
# for the v1 install and for the v1 -> v2 update, and, with relays, what each relay fetched and
# what one machine took (the relays' own counters, GET /api/v1/relay).
#
# Usage (as root): SEMITHIN=target/release/semithin [MACHINES=12] [RELAYS=3] bench/relay.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh

die() {
  printf 'relay: error: %s\n' "$*" >&2
  exit 1
}
SEMITHIN=${SEMITHIN:-target/release/semithin}
[ -x "$SEMITHIN" ] || die "no binary at $SEMITHIN: cargo build --release -p semithin, or set SEMITHIN"
SEMITHIN=$(realpath "$SEMITHIN")
MACHINES=${MACHINES:-12}
RELAYS=${RELAYS:-3}
FILES=${FILES:-200}
BIG=${BIG:-2000000}
WORK=${1:-$(mktemp -d /var/tmp/semithin-bench-relay.XXXXXX)}
mkdir -p "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json() { python3 -c "import json,sys; v=json.load(sys.stdin); print($1)"; }
up() { for _ in $(seq 300); do curl -sf "$1/api/v1/health" >/dev/null && return 0; sleep 0.1; done; die "$1 does not answer"; }

image() { # DIR VERSION
  mkdir -p "$1/etc" "$1/usr/lib/b"
  printf 'VERSION_ID=%s\n' "$2" >"$1/etc/os-release"
  head -c "$BIG" /dev/urandom >"$1/usr/lib/b/big"
  for i in $(seq "$FILES"); do printf 'file %s of version %s\n' "$i" "$2" >"$1/usr/lib/b/f$i"; done
}

content() { # URL TOKEN: objects + deltas the server sent
  curl -sf -H "Authorization: Bearer $2" "$1/api/v1/admin/stats" |
    json 'v["object_bytes_sent"] + v["delta_bytes_sent"]'
}

updated() { # URL TOKEN RELEASE: how many machines run it
  curl -sf -H "Authorization: Bearer $2" "$1/api/v1/admin/machines" |
    json "sum(1 for m in v if m.get('updated') and m['report'].get('current') == '$3' and 'role' not in m['labels'])"
}

wait_updated() { # URL TOKEN RELEASE N
  local start=$SECONDS
  until [ "$(updated "$1" "$2" "$3")" -ge "$4" ]; do
    [ $((SECONDS - start)) -lt 600 ] || die "$4 machines not on $3 within 600 s"
    sleep 0.5
  done
}

# run KIND: prints "v1_root v2_root per_machine_v2 relay_fetched_v2..."
run() {
  local kind=$1 d=$WORK/$1
  rm -rf "$d" && mkdir -p "$d"
  local p url token
  p=$(port)
  url=http://127.0.0.1:$p
  "$SEMITHIN" serve --listen "127.0.0.1:$p" --data "$d/server" --max-wait 30 >"$d/server.log" 2>&1 &
  PIDS+=($!)
  up "$url"
  token=$(cat "$d/server/admin-token")
  export SEMITHIN_SERVER=$url SEMITHIN_ADMIN_TOKEN=$token SEMITHIN_REPO=$d/server/repo
  local enroll
  enroll=$(curl -sf -H "Authorization: Bearer $token" -d '{"preauthorized": true, "uses": 1000}' \
    "$url/api/v1/admin/tokens" | json 'v["token"]')
  image "$d/img" 1
  v1=$("$SEMITHIN" commit "$d/img" --channel lab/stable --json | json 'v["commit"]')
  "$SEMITHIN" publish lab/stable >/dev/null 2>&1
  local relays=()
  if [ "$kind" = relays ]; then
    for r in $(seq "$RELAYS"); do
      local rp
      rp=$(port)
      "$SEMITHIN" relay --upstream "$url" --data "$d/relay$r" --listen "127.0.0.1:$rp" \
        --name "site-$r" --token "$enroll" >"$d/relay$r.log" 2>&1 &
      PIDS+=($!)
      up "http://127.0.0.1:$rp"
      relays+=("http://127.0.0.1:$rp")
    done
  fi
  for i in $(seq "$MACHINES"); do
    local to=$url
    [ "$kind" = relays ] && to=${relays[$(((i - 1) % RELAYS))]}
    "$SEMITHIN" agent --state "$d/agents/m$i" --server "$to" --token "$enroll" --name "m$i" \
      --trusted-root "$d/server/repo/trust/metadata/1.root.json" --verify-interval 0 \
      --inventory-interval 0 --interval 300 >"$d/m$i.log" 2>&1 &
    PIDS+=($!)
  done
  until [ "$(curl -sf -H "Authorization: Bearer $token" "$url/api/v1/admin/machines" | json 'len(v)')" -ge $((MACHINES + ${#relays[@]})) ]; do sleep 0.5; done
  "$SEMITHIN" fleet assign "*" lab/stable >/dev/null 2>&1
  wait_updated "$url" "$token" "$v1" "$MACHINES"
  local r1 served=0
  r1=$(content "$url" "$token")
  for r in "${relays[@]}"; do
    served=$((served + $(curl -sf "$r/api/v1/relay" | json 'v["served_bytes"]')))
  done
  image "$d/img" 2
  v2=$("$SEMITHIN" commit "$d/img" --channel lab/stable --json | json 'v["commit"]')
  local t0=$SECONDS
  "$SEMITHIN" publish lab/stable >/dev/null 2>&1
  wait_updated "$url" "$token" "$v2" "$MACHINES"
  local secs=$((SECONDS - t0)) r2 served2=0 fetched=""
  r2=$(($(content "$url" "$token") - r1))
  for r in "${relays[@]}"; do
    served2=$((served2 + $(curl -sf "$r/api/v1/relay" | json 'v["served_bytes"]')))
    fetched="$fetched $(curl -sf "$r/api/v1/relay" | json 'v["fetched_bytes"]')"
  done
  local per=$(( (served2 - served) / MACHINES ))
  [ "$kind" = direct ] && per=$((r2 / MACHINES))
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
  echo "$r1 $r2 $per $secs$fetched"
}

read -r D1 D2 DPER DSECS < <(run direct)
read -r R1 R2 RPER RSECS RFETCHED < <(run relays)
ratio=$(python3 -c "print(f'{$R2 / ($RELAYS * $DPER):.2f}')")
section=$WORK/section.md
{
  echo "# semithin relay benchmark: root egress per update with and without relays"
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M') UTC — relays: \`MACHINES=$MACHINES RELAYS=$RELAYS bench/relay.sh\`"
  echo
  echo "$MACHINES agents, an image of $FILES small files and a $BIG-byte random file, v1 then v2 (every"
  echo "file changed). Content = objects + delta packs the root sent (its /api/v1/admin/stats)."
  echo
  echo "| fleet | root content for v1 | root content for v1 -> v2 | one machine's v2 | v2 converged in |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  echo "| direct | $D1 | $D2 | $DPER | $DSECS s |"
  echo "| $RELAYS relays | $R1 | $R2 | $RPER | $RSECS s |"
  echo
  echo "With relays the root sent $ratio x the update per relay for v2 (goal: <= 1.1); each relay"
  echo "fetched (v1 and v2, with metadata):$RFETCHED bytes."
} >"$section"
cat "$section"
replace_section bench/RESULTS.md "$section" "# semithin relay benchmark" "$WORK"
