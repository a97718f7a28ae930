#!/usr/bin/env bash
# Dashboard benchmark: time to first byte and full answer of the web dashboard's pages with
# 100,000 machines, p50/p95/max over a bounded number of requests per page, and the page weight.
# Goal: p95 < 200 ms on 2 cores for the machines list and the overview.
#
# Usage: bench/dashboard.sh [WORK_DIR]
#   WORK_DIR   where everything is written (kept afterwards); default a new temporary directory,
#              removed at the end.
# Environment:
#   SEMITHIN, BENCH_FLEET  prebuilt `semithin` and `bench_fleet` binaries instead of
#              `cargo build --release -p semithin --bin semithin --example bench_fleet`
#   MACHINES   how many (100000), REQUESTS per page (50), WARMUP requests per page (3)
#
# How:
# - `bench_fleet populate` (the fleet benchmark's helper) writes the machines straight into
#   DATA/fleet.db with the server's own schema and insert function, accepted on a channel with a
#   published release; then python3's sqlite3 gives them a variety the pages work through:
#   labels site=school-0..99 and class=lab|office, last-seen times over the last two hours
#   (never seen for one in 50), one in 100 reporting a failed release with a reason, one in 200
#   pending. The server then starts as usual and loads them all into memory.
# - One login through the login form (curl, the session cookie kept); every page request then
#   carries the cookie, as a browser's does. The first page (which makes the dashboard's index of
#   the fleet) is timed on its own. Requests are sequential (one at a time, new
#   connection each): curl's time_starttransfer is the time to first byte, time_total the full
#   answer. The pages are rendered whole on the server, so the two are close.
# - Page weight: the HTML of each page, and the three assets every page names (htmx, the
#   dashboard's script and style sheet), which a browser fetches once and caches for a day.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO_ROOT/bench/common.sh"
MACHINES=${MACHINES:-100000}
REQUESTS=${REQUESTS:-50}
WARMUP=${WARMUP:-3}
CMDLINE="bench/dashboard.sh"
for var in MACHINES REQUESTS WARMUP; do
  if [ -n "${!var:-}" ]; then CMDLINE="$var=${!var} $CMDLINE"; fi
done

die() { printf 'dashboard: error: %s\n' "$*" >&2; exit 1; }
say() { printf '== %s\n' "$*" >&2; }
for t in curl python3; do command -v "$t" >/dev/null || die "$t is needed"; done

if [ -n "${SEMITHIN:-}" ] || [ -n "${BENCH_FLEET:-}" ]; then
  BIN=$(realpath -e "$SEMITHIN") HELPER=$(realpath -e "$BENCH_FLEET")
else
  say "cargo build --release -p semithin --bin semithin --example bench_fleet"
  (cd "$REPO_ROOT" && cargo build --release -p semithin --bin semithin --example bench_fleet >&2)
  T=$(cd "$REPO_ROOT" && realpath -e "${CARGO_TARGET_DIR:-target}")
  BIN=$T/release/semithin HELPER=$T/release/examples/bench_fleet
fi

if [ -n "${1:-}" ]; then
  mkdir -p "$1"; W=$(cd "$1" && pwd); REMOVE_W=0
else
  W=$(mktemp -d "${TMPDIR:-/tmp}/semithin-dashboard.XXXXXX"); REMOVE_W=1
fi
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill -TERM "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [ "$REMOVE_W" = 1 ]; then rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$W/home" "$W/tiny/etc"
st() { env -u SEMITHIN_SERVER -u SEMITHIN_ADMIN_TOKEN -u SEMITHIN_ADMIN_CONFIG -u SEMITHIN_REPO HOME="$W/home" "$BIN" "$@"; }

say "a server data directory with a release on bench/fleet"
printf 'ID=bench\n' >"$W/tiny/etc/os-release"
"$HELPER" init "$W/data" 2>"$W/init.log"
REL=$(st --repo "$W/data/repo" commit "$W/tiny" --channel bench/fleet --json 2>>"$W/init.log" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["commit"])')
st --repo "$W/data/repo" publish bench/fleet >>"$W/init.log" 2>&1 || die "publish failed; see $W/init.log"
say "$MACHINES machines into fleet.db"
"$HELPER" populate "$W/data" "$MACHINES" bench/fleet "$REL" 2>>"$W/init.log" || die "populate failed; see $W/init.log"
python3 - "$W/data/fleet.db" "$REL" <<'PY'
import json, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
now = int(time.time())
rows = db.execute("SELECT rowid, report FROM machines").fetchall()
for rowid, report in rows:
    labels = {"site": f"school-{rowid % 100}", "class": "lab" if rowid % 3 else "office"}
    seen = None if rowid % 50 == 0 else now - (rowid * 7919) % 7200
    status = "pending" if rowid % 200 == 1 else "accepted"
    rep = json.loads(report)
    if rowid % 100 == 7:
        rep["failed_release"] = sys.argv[2]
        rep["health"] = "failed"
        rep["last_error"] = "health check failed: unit foo.service is not active"
    db.execute("UPDATE machines SET labels = ?, last_seen = ?, status = ?, report = ? WHERE rowid = ?",
               (json.dumps(labels), seen, status, json.dumps(rep), rowid))
db.commit()
PY

PORT=$("$HELPER" free-port)
URL=http://127.0.0.1:$PORT
say "semithin serve with $MACHINES machines"
env -u SEMITHIN_CONFIG -u SEMITHIN_LOG HOME="$W/home" \
  "$BIN" serve --data "$W/data" --listen "127.0.0.1:$PORT" </dev/null >"$W/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 600); do
  curl -sf "$URL/api/v1/health" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || die "the server stopped; see $W/server.log"
  sleep 0.5
done
grep -q "machines=$MACHINES" "$W/server.log" || die "the server did not load $MACHINES machines; see $W/server.log"
TOKEN=$(cat "$W/data/admin-token")

JAR=$W/cookies
code=$(curl -s -o /dev/null -w '%{http_code}' -c "$JAR" --data-urlencode "token=$TOKEN" "$URL/login")
[ "$code" = 303 ] || die "login answered $code"

# The first page after the start makes the dashboard's index of the fleet (web/index.rs); the
# others read it (made again every second in the background while pages ask).
COLD=$(curl -s -o /dev/null -b "$JAR" -w '%{time_total}' "$URL/machines?sort=state")
COLD_MS=$(python3 -c "print(round($COLD * 1000))")

PAGES=(
  "/"
  "/machines"
  "/machines?sort=state"
  "/machines?state=failed"
  "/machines?q=school-42&page=3"
  "/machines?selector=site%3Dschool-7,class%3Dlab"
  "/machines/bench-050000"
)
WHAT=(
  "overview (census of every machine, chart)"
  "machines, page 1 by name"
  "machines sorted by state (every machine's state)"
  "machines in state failed"
  "machines, text filter, page 3"
  "machines, label selector"
  "one machine"
)
TABLE=$W/table.md
: >"$TABLE"
for i in "${!PAGES[@]}"; do
  p=${PAGES[$i]}
  say "GET $p: $WARMUP warm-up, $REQUESTS measured"
  for _ in $(seq "$WARMUP"); do curl -s -o /dev/null -b "$JAR" "$URL$p"; done
  : >"$W/times"
  for _ in $(seq "$REQUESTS"); do
    curl -s -o "$W/page.html" -b "$JAR" -w '%{http_code} %{time_starttransfer} %{time_total} %{size_download}\n' "$URL$p" >>"$W/times"
  done
  awk '$1 != 200 { bad++ } END { exit bad > 0 }' "$W/times" || die "GET $p did not answer 200 every time: $(sort -u "$W/times" | head -3)"
  python3 - "$W/times" "$p" "${WHAT[$i]}" >>"$TABLE" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1])]
ttfb = sorted(float(r[1]) * 1000 for r in rows)
total = sorted(float(r[2]) * 1000 for r in rows)
size = int(rows[-1][3])
def pct(v, p):
    return v[min(len(v) - 1, int(round(p / 100 * len(v) + 0.5)) - 1)]
print(f"| `{sys.argv[2]}` | {sys.argv[3]} | {pct(ttfb, 50):.0f} | {pct(ttfb, 95):.0f} | "
      f"{pct(total, 50):.0f} | {pct(total, 95):.0f} | {total[-1]:.0f} | {size:,} |")
PY
done
ASSETS=0
for a in htmx.min.js dashboard.js dashboard.css; do
  n=$(curl -s -o /dev/null -w '%{size_download}' "$URL/assets/$a")
  ASSETS=$((ASSETS + n))
done
RSS=$(awk '/VmRSS/ { print $2 }' "/proc/$SERVER_PID/status")

SECTION=$W/section.md
{
  echo "# semithin dashboard benchmark: pages with $MACHINES machines"
  echo
  echo "\`$CMDLINE\` ($(nproc) cores, $(date -u +%Y-%m-%d), release build). $MACHINES machines"
  echo "written into the server's SQLite by \`bench_fleet populate\` and varied (labels of 100"
  echo "sites, last-seen times, 1% failed, 0.5% pending), loaded into memory at start as always."
  echo "$REQUESTS sequential requests per page after $WARMUP warm-up ones, each with the session"
  echo "cookie of one login, on loopback; milliseconds; size of the HTML in bytes. Goal: p95 under"
  echo "200 ms for the machines list and the overview."
  echo
  echo "| page | what the server does | TTFB p50 | TTFB p95 | full p50 | full p95 | full max | HTML bytes |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  cat "$TABLE"
  echo
  echo "The first page after the server started (\`/machines?sort=state\`), which made the"
  echo "dashboard's index of the fleet: $COLD_MS ms; every page after it reads the index, made again"
  echo "every second in the background while pages ask (at once after an admin change)."
  echo
  echo "Assets every page names (htmx 2.0.11, the dashboard's script and style sheet; fetched"
  echo "once, cached for a day): $ASSETS bytes, uncompressed. Server resident memory after the run:"
  echo "$((RSS / 1024)) MiB."
} >"$SECTION"
cat "$SECTION"
replace_section "$REPO_ROOT/bench/RESULTS.md" "$SECTION" "# semithin dashboard benchmark" "$W"
say "bench/RESULTS.md updated"
