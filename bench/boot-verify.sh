#!/usr/bin/env bash
# What the check at boot costs (docs/BOOT.md, "Verification at boot"): boots the same disk
# under qemu (TCG, no KVM) with semithin.verify=off, semithin.verify=full and semithin.verify=quick
# (the default: against the seal the full check left), RUNS times each, alternating, and prints
# a Markdown section for bench/RESULTS.md.
#
# The disk: a base system (busybox) whose /var/lib/semithin holds an agent state with one
# deployment of IMAGE (default: the tests' `debootstrap --variant=minbase bookworm` tree), made
# with `semithin commit` and `semithin checkout` into the state's own repository, which is
# what the agent's staging does. The deployment's /sbin/init prints the kernel's uptime and
# powers off. The kernel and initramfs are Debian's, with semithin's hook
# (tests/fixtures/boot-root.sh).
#
# Usage (as root): SEMITHIN=target/release/semithin [RUNS=3] [IMAGE=DIR] bench/boot-verify.sh
# Reported per boot: wall seconds from starting qemu until it ended (power-off), the guest's
# uptime when the deployment's init started, and the seconds `agent boot-verify` says it took.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  printf 'boot-verify: error: %s\n' "$*" >&2
  exit 1
}
[ "$(id -u)" -eq 0 ] || die "must be run as root"
SEMITHIN=${SEMITHIN:-target/release/semithin}
[ -x "$SEMITHIN" ] || die "no binary at $SEMITHIN: cargo build --release -p semithin, or set SEMITHIN"
SEMITHIN=$(realpath "$SEMITHIN")
RUNS=${RUNS:-3}
IMAGE=${IMAGE:-$(tests/fixtures/debian-root.sh base)}
MEM=${MEM:-1024}

QEMU=$(tests/fixtures/qemu.sh)
ROOT=$(tests/fixtures/boot-root.sh root)
KIT=$(tests/fixtures/boot-root.sh initrd "$SEMITHIN")
WORK=$(mktemp -d /var/tmp/semithin-boot-verify.XXXXXX)
trap 'rm -rf --one-file-system "$WORK"' EXIT

# busybox and, in a tree that lacks them, the libraries it needs. A tree that has them (a Debian
# root) is left alone: its /lib64/ld-linux-x86-64.so.2 is an absolute symlink, which a copy
# would follow out of the tree.
busybox_into() {
  mkdir -p "$1/bin" "$1/sbin" "$1/etc" "$1/var" "$1/dev" "$1/proc" "$1/sys" "$1/run" "$1/tmp"
  cp "$ROOT/usr/bin/busybox" "$1/bin/busybox"
  if [ -e "$1/lib64/ld-linux-x86-64.so.2" ] || [ -L "$1/lib64/ld-linux-x86-64.so.2" ]; then
    return 0
  fi
  mkdir -p "$1/lib/x86_64-linux-gnu" "$1/lib64"
  for l in libc.so.6 libresolv.so.2; do
    cp "$ROOT/usr/lib/x86_64-linux-gnu/$l" "$1/lib/x86_64-linux-gnu/"
  done
  cp "$ROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$1/lib64/"
}

# The image: IMAGE with busybox and an init that reports and powers off.
cp -a "$IMAGE" "$WORK/img"
busybox_into "$WORK/img"
rm -f "$WORK/img/sbin/init"
cat >"$WORK/img/sbin/init" <<'EOF'
#!/bin/busybox sh
read -r up _ </proc/uptime
echo "BENCH-INIT uptime=$up"
/bin/busybox poweroff -f
EOF
chmod 0755 "$WORK/img/sbin/init"

# The partition: a base system and the agent's state with the image deployed.
P=$WORK/part
busybox_into "$P"
printf '#!/bin/busybox sh\necho BENCH-BASE\n/bin/busybox poweroff -f\n' >"$P/sbin/init"
chmod 0755 "$P/sbin/init"
S=$P/var/lib/semithin
mkdir -p "$S/deployments"
"$SEMITHIN" repo init "$S/repo" >/dev/null
ID=$("$SEMITHIN" --repo "$S/repo" commit --channel bench/boot --json "$WORK/img" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["commit"])')
"$SEMITHIN" --repo "$S/repo" checkout "$ID" "$S/deployments/$ID" >/dev/null
ln -s "deployments/$ID" "$S/current"
# The same check on the host, natively (page cache warm: the tree was just written), for scale.
native=""
for r in $(seq 1 "$RUNS"); do
  t0=$(date +%s.%N)
  "$SEMITHIN" agent --state "$S" boot-verify 2>/dev/null || die "boot-verify on the host failed"
  t1=$(date +%s.%N)
  native="$native $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')"
done
# the full checks above sealed the deployment: the quick check against that seal
native_quick=""
for r in $(seq 1 "$RUNS"); do
  t0=$(date +%s.%N)
  "$SEMITHIN" agent --state "$S" boot-verify --quick 2>"$WORK/quick.err" || die "boot-verify --quick on the host failed"
  grep -q "(quick check, " "$WORK/quick.err" || die "no quick check on the host: $(cat "$WORK/quick.err")"
  t1=$(date +%s.%N)
  native_quick="$native_quick $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')"
done
rm -f "$S/boot-verify.json" "$S/lock"
files=$(find "$WORK/img" | wc -l)
bytes=$(du -sb --apparent-size "$WORK/img" | cut -f1)
mb=$(($(du -sm "$P" | cut -f1) * 13 / 10 + 64))
mkfs.ext4 -q -F -L root -d "$P" "$WORK/disk.img" "${mb}M" >&2
rm -rf --one-file-system "$WORK/img" "$P"

boot() { # MODE RUN -> "wall uptime verify_s"
  local log=$WORK/console-$1-$2.log t0 t1
  t0=$(date +%s.%N)
  timeout 900 "$QEMU" -nographic -no-reboot -monitor none -m "$MEM" -serial "file:$log" \
    -kernel "$KIT/vmlinuz" -initrd "$KIT/initrd.img" \
    -drive "file=$WORK/disk.img,format=raw,if=virtio" \
    -append "console=ttyS0 panic=-1 root=/dev/vda quiet semithin.verify=$1" </dev/null >/dev/null 2>&1 ||
    die "qemu failed or timed out ($1, run $2): $(tail -5 "$log")"
  t1=$(date +%s.%N)
  grep -q BENCH-INIT "$log" || die "the deployment was not booted ($1, run $2): $(tr -d '\r' <"$log" | grep semithin | tail -5)"
  local up v
  up=$(tr -d '\r' <"$log" | sed -n 's/^BENCH-INIT uptime=//p')
  if [ "$1" = quick ]; then
    v=$(tr -d '\r' <"$log" | sed -n 's/.*entries unchanged since verified (quick check, \([0-9.]*\) s).*/\1/p')
  else
    v=$(tr -d '\r' <"$log" | sed -n 's/.*bytes verified against the release in \([0-9.]*\) s.*/\1/p')
  fi
  [ "$1" = off ] || [ -n "$v" ] || die "no $1 verification line on the console (run $2)"
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') $up ${v:--}"
}

declare -A WALL UP VER
# The same disk every time: the first full check seals the deployment (mkfs.ext4 -d gave it new
# inodes), and every quick check after it compares against that seal.
for r in $(seq 1 "$RUNS"); do
  for m in off full quick; do
    read -r w u v < <(boot "$m" "$r")
    WALL[$m,$r]=$w
    UP[$m,$r]=$u
    VER[$m,$r]=$v
    printf 'boot-verify: %s run %s: %s s wall, init at %s s uptime, verify %s s\n' "$m" "$r" "$w" "$u" "$v" >&2
  done
done
# The full check's own figure (files, bytes), from the last full boot.
VERIFIED=$(tr -d '\r' <"$WORK/console-full-$RUNS.log" | sed -n 's/.*semithin: deployment [0-9a-f]*: \([0-9]* files, [0-9]* bytes\) verified.*/\1/p')

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
col() { local m=$1 k=$2 r s=""; for r in $(seq 1 "$RUNS"); do eval "s=\"\$s \${$k[$m,$r]}\""; done; echo "$s"; }

echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — boot verification: \`SEMITHIN=$(basename "$SEMITHIN") RUNS=$RUNS bench/boot-verify.sh\`"
echo
echo "- machine: $(nproc) cores, $(uname -r), qemu $("$QEMU" --version | head -1 | awk '{print $4}') under TCG (no KVM), -m $MEM"
echo "- image: $(basename "$IMAGE") with busybox and a reporting /sbin/init: $files entries, $bytes bytes (apparent size); the check at boot reads ${VERIFIED:-?} (regular files)"
echo "- disk: ext4 image of $mb MiB made with mkfs.ext4 -d; kernel $(basename "$(ls "$ROOT"/boot/vmlinuz-* | tail -1)"), initramfs by initramfs-tools (MODULES=list, gzip)"
echo "- the same check run natively on the host (\`semithin agent --state STATE boot-verify\`, page cache warm), $RUNS times:$native s; the quick check (\`boot-verify --quick\`, against the seal the full one left):$native_quick s"
echo "- each boot: qemu started, the initramfs mounts the disk, the boot script (with or without the check) mounts the deployment, its init prints the kernel's uptime and powers off"
echo
echo "| semithin.verify | run | wall s (qemu start to power-off) | uptime at init s | check s (its own clock) |"
echo "| --- | ---: | ---: | ---: | ---: |"
for m in off full quick; do
  for r in $(seq 1 "$RUNS"); do
    echo "| $m | $r | ${WALL[$m,$r]} | ${UP[$m,$r]} | ${VER[$m,$r]} |"
  done
done
wo=$(col off WALL | median)
wf=$(col full WALL | median)
uo=$(col off UP | median)
uf=$(col full UP | median)
vf=$(col full VER | median)
wq=$(col quick WALL | median)
uq=$(col quick UP | median)
vq=$(col quick VER | median)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b / a}'; }
echo
echo "Medians: wall $wo s off, $wf s full (ratio $(ratio "$wo" "$wf")); uptime at init $uo s off, $uf s full (ratio $(ratio "$uo" "$uf"), $(awk -v a="$uo" -v b="$uf" 'BEGIN {printf "%+.2f", b - a}') s); the check itself $vf s. Quick (the default): wall $wq s (ratio $(ratio "$wo" "$wq")), uptime at init $uq s ($(awk -v a="$uo" -v b="$uq" 'BEGIN {printf "%+.2f", b - a}') s against off), the quick check itself $vq s."
