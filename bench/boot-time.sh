#!/usr/bin/env bash
# Time from power-on to the first check-in under qemu (TCG, no KVM): semithin's boot path
# against the same image booted with a stock Debian initramfs, in one run, RUNS boots of each
# kind alternating, and a Markdown section for bench/RESULTS.md.
#
# One disk made by `semithin image disk` from a release: a busybox system whose /sbin/init
# brings up the network, runs `semithin agent --once` (which enrolls: the first check-in with
# the server on the host's loopback) and prints the kernel's uptime before and after. Both kinds
# boot that disk with the same kernel (Debian's, given to qemu directly, so the firmware and the
# boot loader are left out of both):
#   semithin  the initramfs made by initramfs-tools with semithin's hook (tests/fixtures/
#             boot-root.sh) and its defaults: the deployment checked quickly against its seal
#             (semithin.verify=quick), then mounted read-only with the /etc overlay, as on
#             every installed machine;
#   semithin-full      the same with semithin.verify=full (every file read and hashed);
#   semithin-noverify  the same with semithin.verify=off (the check at boot left out);
#   stock     an initramfs of the same kernel made by the same initramfs-tools without
#             semithin's hook: the root partition itself is the root, and its base system is
#             the same release (`image disk` checks it out there too).
# Both initramfs load the same modules (MODULES=list: the virtio disk and ext4; or the list in
# $MODULES, to measure what a list of one's own costs: its run has a section of its own in
# RESULTS.md) and are compressed alike (initramfs-tools' default, zstd), so what differs is
# semithin's hook alone.
# The disk is booted once first with semithin's initramfs and bench.prime, on which the init
# powers off at once: that boot verifies the deployment in full and seals it (mkfs.ext4 -d
# gives the files new inodes, so a disk made by `image disk` has no seal yet), as the first
# boot of every machine does. Each measured boot gets a fresh copy of that disk (a new machine
# enrolling under its own name).
#
# Usage (as root): SEMITHIN=target/release/semithin [RUNS=3] [MODULES="..."] bench/boot-time.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/common.sh
. bench/common.sh

die() {
  printf 'boot-time: error: %s\n' "$*" >&2
  exit 1
}
[ "$(id -u)" -eq 0 ] || die "must be run as root"
SEMITHIN=${SEMITHIN:-target/release/semithin}
[ -x "$SEMITHIN" ] || die "no binary at $SEMITHIN: cargo build --release -p semithin, or set SEMITHIN"
SEMITHIN=$(realpath "$SEMITHIN")
RUNS=${RUNS:-3}
MEM=${MEM:-1024}

[ -x "$(dirname "$SEMITHIN")/semithin-initrd" ] || die "no semithin-initrd beside $SEMITHIN: the initramfs is measured with it"
QEMU=$(tests/fixtures/qemu.sh)
ROOT=$(tests/fixtures/boot-root.sh root)
DEFAULT_MODULES="virtio_pci virtio_blk ext4 crc32c_generic"
MODULES=${MODULES:-$DEFAULT_MODULES}
TITLE="# boot time to the first check-in"
ENV_MODULES=
if [ "$MODULES" != "$DEFAULT_MODULES" ]; then
  TITLE="# boot time with a modules list of one's own"
  ENV_MODULES=" MODULES=\"$MODULES\""
fi
KIT=$(SEMITHIN_INITRD_MODULES=$MODULES tests/fixtures/boot-root.sh initrd "$SEMITHIN")
COMPRESS=$(sed -n 's/^COMPRESS=//p' "$ROOT/etc/initramfs-tools/initramfs.conf" | tail -1)
[ -n "$COMPRESS" ] || die "no COMPRESS in the boot root's initramfs.conf"
KVER=$(cat "$KIT/version")
WORK=$(mktemp -d /var/tmp/semithin-boot-time.XXXXXX)
SERVER_PID=
cleanup() {
  [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true
  rm -rf --one-file-system "$WORK" "$ROOT/tmp/semithin-boot-time-conf"
}
trap cleanup EXIT

# The stock initramfs: the same initramfs-tools and modules list, a configuration directory
# without semithin's hook and scripts.
C=$ROOT/tmp/semithin-boot-time-conf
rm -rf "$C"
mkdir -p "$C/scripts" "$C/hooks" "$C/conf.d"
printf 'MODULES=list\nCOMPRESS=%s\nBUSYBOX=auto\n' "$COMPRESS" >"$C/initramfs.conf"
# shellcheck disable=SC2086 # a list of words
printf '%s\n' $MODULES >"$C/modules"
unshare --mount --propagation private /bin/sh -c '
  set -e
  mount -t proc proc "$1/proc"
  chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    mkinitramfs -d /tmp/semithin-boot-time-conf -o /tmp/semithin-boot-time-conf/initrd.img "$2"
' sh "$ROOT" "$KVER" >&2 || die "mkinitramfs of the stock initramfs failed"
cp "$C/initrd.img" "$WORK/stock.img"
objcopy --strip-all "$(dirname "$SEMITHIN")/semithin-initrd" "$WORK/semithin-initrd"
SMALL_MB=$(du -k "$WORK/semithin-initrd" | awk '{printf "%.1f", $1 / 1024}')
if lsinitramfs "$WORK/stock.img" 2>/dev/null | grep -q semithin; then
  die "the stock initramfs has semithin in it"
fi
kind() { file -b "$1" | cut -d' ' -f1; }
[ "$(kind "$WORK/stock.img")" = "$(kind "$KIT/initrd.img")" ] ||
  die "the initramfs are compressed differently: $(kind "$WORK/stock.img") stock, $(kind "$KIT/initrd.img") semithin's"

# The release: busybox, the agent (stripped), the kernel and initrd, the network modules.
I=$WORK/img
mkdir -p "$I"/{bin,sbin,etc/semithin,var,dev,proc,sys,run,tmp,usr/bin,boot/efi,lib64,lib/x86_64-linux-gnu}
chmod 1777 "$I/tmp"
cp "$ROOT/usr/bin/busybox" "$I/bin/busybox"
ln -s busybox "$I/bin/sh"
for l in libc.so.6 libresolv.so.2 libgcc_s.so.1 libm.so.6; do
  cp "$ROOT/usr/lib/x86_64-linux-gnu/$l" "$I/lib/x86_64-linux-gnu/"
done
cp "$ROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$I/lib64/"
objcopy --strip-debug "$SEMITHIN" "$I/usr/bin/semithin"
cp "$KIT/vmlinuz" "$I/boot/vmlinuz-$KVER"
cp "$KIT/initrd.img" "$I/boot/initrd.img-$KVER"
M=$I/lib/modules/$KVER/t
mkdir -p "$M"
for m in failover net_failover virtio_net; do
  p=$(sed -n "s|^\(.*/$m\.ko\):.*|\1|p" "$KIT/modules/modules.dep")
  [ -n "$p" ] || die "no $m module for $KVER"
  cp "$KIT/modules/$p" "$M/"
  echo "$m" >>"$M/order"
done
printf 'verify_interval_secs = 0\n' >"$I/etc/semithin/agent.toml"
cat >"$I/sbin/init" <<'EOF'
#!/bin/busybox sh
B=/bin/busybox
read -r up _ </proc/uptime
echo "BENCH-INIT uptime=$up"
$B mount -t proc proc /proc
if $B grep -q bench.prime /proc/cmdline; then
  echo "BENCH-BOOTED $($B cat /run/semithin/booted 2>/dev/null || echo none)"
  $B sync
  $B poweroff -f
fi
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev 2>/dev/null
$B mount -t tmpfs tmp /tmp
# The stock boot mounts the partition read-only; semithin's boot already made /var writable.
[ -e /run/semithin/booted ] || $B mount -o remount,rw /
K=/lib/modules/$($B uname -r)/t
for m in $($B cat $K/order); do $B insmod $K/$m.ko 2>/dev/null; done
for x in $($B cat /proc/cmdline); do case $x in bench.name=*) $B hostname ${x#bench.name=} ;; esac; done
$B ip link set lo up
# the NIC: eth0, or the name udev in the initramfs gave it (ens3) when it loaded the driver
IF=$($B ls /sys/class/net | $B grep -v '^lo$' | $B head -n 1)
$B ip link set "$IF" up
$B ip addr add 10.0.2.15/24 dev "$IF"
$B ip route add default via 10.0.2.2
/usr/bin/semithin agent --state /var/lib/semithin --config /etc/semithin/agent.toml --once >/dev/null 2>&1
read -r up _ </proc/uptime
echo "BENCH-CHECKIN uptime=$up"
echo "BENCH-BOOTED $($B cat /run/semithin/booted 2>/dev/null || echo none)"
$B sync
$B poweroff -f
EOF
chmod 0755 "$I/sbin/init"

# The server on loopback (the guest reaches it as 10.0.2.2), the release published, the disk.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$SEMITHIN" serve --listen "127.0.0.1:$PORT" --data "$WORK/server" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
  [ -s "$WORK/server/admin-token" ] && python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/api/v1/health')" 2>/dev/null && break
  sleep 0.2
done
export SEMITHIN_SERVER=http://127.0.0.1:$PORT SEMITHIN_REPO=$WORK/server/repo HOME=$WORK
SEMITHIN_ADMIN_TOKEN=$(cat "$WORK/server/admin-token")
export SEMITHIN_ADMIN_TOKEN
"$SEMITHIN" commit "$I" --channel bench/boot >/dev/null
"$SEMITHIN" publish bench/boot >/dev/null
TOKEN=$("$SEMITHIN" fleet token create --preauthorized --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
"$SEMITHIN" image disk bench/boot --out "$WORK/disk.img" --server "http://10.0.2.2:$PORT" \
  --token "$TOKEN" --json >"$WORK/disk.json" 2>"$WORK/disk.log" || die "image disk failed: $(cat "$WORK/disk.log")"
read -r ID UUID < <(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["release"], d["root_uuid"])' "$WORK/disk.json")
rm -rf --one-file-system "$I"

boot() { # KIND RUN -> "wall_to_checkin uptime_init uptime_checkin"
  local kind=$1 run=$2 log=$WORK/console-$1-$2.log disk=$WORK/run.img initrd append t0 t1 pid
  cp --sparse=always "$WORK/primed.img" "$disk"
  append="console=ttyS0 panic=-1 quiet root=UUID=$UUID ro bench.name=$kind-$run"
  if [ "$kind" = semithin ]; then
    initrd=$KIT/initrd.img
    append="$append semithin.deployment=$ID"
  elif [ "$kind" = semithin-full ]; then
    initrd=$KIT/initrd.img
    append="$append semithin.deployment=$ID semithin.verify=full"
  elif [ "$kind" = semithin-noverify ]; then
    initrd=$KIT/initrd.img
    append="$append semithin.deployment=$ID semithin.verify=off"
  else
    initrd=$WORK/stock.img
  fi
  t0=$(date +%s.%N)
  "$QEMU" -nographic -no-reboot -monitor none -m "$MEM" -serial "file:$log" \
    -kernel "$KIT/vmlinuz" -initrd "$initrd" -append "$append" \
    -drive "file=$disk,format=raw,if=virtio" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= </dev/null >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 3000); do
    grep -q BENCH-BOOTED "$log" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  t1=$(date +%s.%N)
  wait "$pid" || true
  grep -q BENCH-BOOTED "$log" || die "no check-in ($kind, run $run): $(tr -d '\r' <"$log" | tail -5)"
  local ui uc booted
  booted=$(tr -d '\r' <"$log" | sed -n 's/.*BENCH-BOOTED \(none\|[0-9a-f]\{64\}\).*/\1/p')
  if [ "$kind" != stock ]; then
    [ "$booted" = "$ID" ] || die "semithin did not boot the deployment (run $run): booted '$booted'"
    if [ "$kind" = semithin ]; then
      tr -d '\r' <"$log" | grep -q "entries unchanged since verified (quick check, " ||
        die "the default boot did not take the quick check (run $run): $(tr -d '\r' <"$log" | grep semithin: | head -5)"
    fi
  else
    [ "$booted" = none ] || die "the stock boot booted a deployment (run $run): '$booted'"
  fi
  ui=$(tr -d '\r' <"$log" | sed -n 's/.*BENCH-INIT uptime=\([0-9.]*\).*/\1/p')
  uc=$(tr -d '\r' <"$log" | sed -n 's/.*BENCH-CHECKIN uptime=\([0-9.]*\).*/\1/p')
  [ -n "$ui" ] && [ -n "$uc" ] || die "no uptime on the console ($kind, run $run)"
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') $ui $uc"
}

# The first boot: verified in full and sealed, powered off before the agent runs.
cp --sparse=always "$WORK/disk.img" "$WORK/primed.img"
"$QEMU" -nographic -no-reboot -monitor none -m "$MEM" -serial "file:$WORK/console-prime.log" \
  -kernel "$KIT/vmlinuz" -initrd "$KIT/initrd.img" \
  -append "console=ttyS0 panic=-1 root=UUID=$UUID ro semithin.deployment=$ID bench.prime" \
  -drive "file=$WORK/primed.img,format=raw,if=virtio" -nic none </dev/null >/dev/null 2>&1 ||
  die "the first boot failed: $(tr -d '\r' <"$WORK/console-prime.log" | tail -5)"
tr -d '\r' <"$WORK/console-prime.log" | grep -q "semithin: deployment ${ID:0:12} sealed (" ||
  die "the first boot did not seal the deployment: $(tr -d '\r' <"$WORK/console-prime.log" | grep semithin: | tail -5)"
KINDS="stock semithin semithin-full semithin-noverify"
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
declare -A WALL INIT CHECK
for r in $(seq 1 "$RUNS"); do
  for k in $KINDS; do
    read -r w i c < <(boot "$k" "$r")
    WALL[$k,$r]=$w
    INIT[$k,$r]=$i
    CHECK[$k,$r]=$c
    printf 'boot-time: %s run %s: check-in %s s after qemu started (uptime %s s; init at %s s)\n' "$k" "$r" "$w" "$c" "$i" >&2
  done
done
enrolled=$("$SEMITHIN" fleet list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
[ "$enrolled" -eq $((4 * RUNS)) ] || die "$enrolled machines enrolled, not $((4 * RUNS))"
QUICK=$(for r in $(seq 1 "$RUNS"); do tr -d '\r' <"$WORK/console-semithin-$r.log" | sed -n 's/.*(quick check, \([0-9.]*\) s).*/\1/p'; done | median)
FULLCHECK=$(tr -d '\r' <"$WORK/console-prime.log" | sed -n 's/.*bytes verified against the release in \([0-9.]*\) s.*/\1/p')

col() { local m=$1 k=$2 r s=""; for r in $(seq 1 "$RUNS"); do eval "s=\"\$s \${$k[$m,$r]}\""; done; echo "$s"; }
OUT=$WORK/section.md
{
  echo "$TITLE: \`SEMITHIN=$(basename "$SEMITHIN") RUNS=$RUNS$ENV_MODULES bench/boot-time.sh\`"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores, $(uname -r), qemu $("$QEMU" --version | head -1 | awk '{print $4}') under TCG (no KVM), -m $MEM; kernel $KVER given to qemu directly; load average $(cut -d' ' -f1-3 /proc/loadavg) at the end."
  echo "Both initramfs made by the boot root's initramfs-tools with MODULES=list ($MODULES) and COMPRESS=$COMPRESS: $(du -k "$WORK/stock.img" | awk '{printf "%.1f", $1 / 1024}') MB stock, $(du -k "$KIT/initrd.img" | awk '{printf "%.1f", $1 / 1024}') MB with semithin's hook (semithin-initrd $SMALL_MB MB of it before compression)."
  echo "The image: busybox, the agent ($(du -m "$SEMITHIN" | cut -f1) MB unstripped, stripped in the image), the kernel and its initrd; the disk made by \`semithin image disk\`."
  echo "\`semithin\`: initramfs-tools with semithin's hook and its defaults (the deployment's quick check against its seal, \`semithin.verify=quick\`, then mounted with the /etc overlay); \`semithin-full\`: the same with \`semithin.verify=full\` (every file read and hashed); \`semithin-noverify\`: the same with \`semithin.verify=off\`; \`stock\`: the same initramfs-tools without the hook, the root partition's base system (the same release) booted as it is. Every boot is of a copy of the disk after its first boot (\`bench.prime\`: verified in full and sealed, the full check took ${FULLCHECK:-?} s there; the init powered off before the agent ran)."
  echo
  echo "| boot | run | qemu start to check-in s | uptime at init s | uptime at check-in s |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  for k in $KINDS; do
    for r in $(seq 1 "$RUNS"); do
      echo "| $k | $r | ${WALL[$k,$r]} | ${INIT[$k,$r]} | ${CHECK[$k,$r]} |"
    done
  done
  ws=$(col stock WALL | median)
  wt=$(col semithin WALL | median)
  is=$(col stock INIT | median)
  it=$(col semithin INIT | median)
  wf=$(col semithin-full WALL | median)
  if_=$(col semithin-full INIT | median)
  wn=$(col semithin-noverify WALL | median)
  in=$(col semithin-noverify INIT | median)
  pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%+.1f%%", (b - a) / a * 100}'; }
  echo
  echo "Medians: check-in $ws s stock, $wt s semithin with the quick check, the default ($(pct "$ws" "$wt")), $wf s semithin with the full check ($(pct "$ws" "$wf")), $wn s semithin without the check ($(pct "$ws" "$wn")); init started at $is s stock, $it s quick, $if_ s full, $in s without the check. The quick check itself took $QUICK s (median, as the console says)."
} >"$OUT"
cat "$OUT"
replace_section bench/RESULTS.md "$OUT" "$TITLE" "$WORK"
