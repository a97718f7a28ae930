# Shared by image-build.sh, profile-recompose.sh and delta.sh (sourced, not run): the local
# Debian mirror on loopback and the replacement of a script's section of bench/RESULTS.md.

# serve_mirror ROOT: builds (or finds cached) the fixture mirror of tests/fixtures/debian-mirror.sh
# and serves it on a free loopback port; sets MIRROR_DIR, HTTP_PID and URL (its debian/).
serve_mirror() {
  MIRROR_DIR=$("$1/tests/fixtures/debian-mirror.sh")
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 -m http.server --bind 127.0.0.1 --directory "$MIRROR_DIR" "$port" >/dev/null 2>&1 &
  HTTP_PID=$!
  URL=http://127.0.0.1:$port/debian
  for _ in $(seq 50); do
    python3 -c "import urllib.request; urllib.request.urlopen('$URL/dists/bookworm/InRelease')" 2>/dev/null && return 0
    sleep 0.1
  done
}

# replace_section RESULTS SECTION TITLE WORK: SECTION (a file whose first line is "# TITLE...")
# takes the place of the section of RESULTS whose title starts with TITLE (or goes at the end);
# the rest of RESULTS stays as it is. WORK holds the new file until it replaces RESULTS.
replace_section() {
  local results=$1 section=$2 title=$3 new=$4/RESULTS.md
  if [ -f "$results" ]; then
    awk -v sec="$section" -v title="$title" '
      /^# / {
        if (skip) { skip = 0; print "" }
        if (index($0, title) == 1 && !done) { skip = 1; done = 1; while ((getline l < sec) > 0) print l }
      }
      !skip { print }
      END { if (!done) { print ""; while ((getline l < sec) > 0) print l } }' "$results" >"$new"
  else
    cp "$section" "$new"
  fi
  cp "$new" "$results"
}
