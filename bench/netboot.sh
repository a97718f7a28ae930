#!/usr/bin/env bash
# Network boot (docs/BOOT.md, "Live and network boot"), in one run:
#
# 1. the squashfs semithin makes of a release (`semithin export --format squashfs`: tar2sqfs,
#    zstd, which `publish` uses for the boot artifacts) against `mksquashfs DIR OUT -comp zstd`
#    with mksquashfs's other defaults, on the same tree: wall time and size;
# 2. `semithin publish` of that release with its boot artifacts (the image's own initrd);
# 3. a network boot under qemu (TCG): qemu's iPXE ROM chains to a `semithin serve --netboot` on
#    the host's loopback, boots the release's kernel and initrd, whose boot script fetches and
#    verifies the squashfs and boots it; the bytes of boot artifacts the server sent (its
#    `boot_bytes_sent` counter) against the squashfs, kernel and initrd once (the goal).
#
# The tree: IMAGE (default: the tests' `debootstrap --variant=minbase bookworm` root) with busybox,
# an init that reports and powers off, and the boot fixture's kernel and initramfs
# (tests/fixtures/boot-root.sh, with the server's root.json appended) as the image's own.
#
# Usage (as root): SEMITHIN=target/release/semithin [IMAGE=DIR] bench/netboot.sh
# Prints a Markdown section for bench/RESULTS.md on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  printf 'netboot: error: %s\n' "$*" >&2
  exit 1
}
say() { printf 'netboot: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || die "must be run as root"
SEMITHIN=${SEMITHIN:-target/release/semithin}
[ -x "$SEMITHIN" ] || die "no binary at $SEMITHIN: cargo build --release -p semithin, or set SEMITHIN"
SEMITHIN=$(realpath "$SEMITHIN")
IMAGE=${IMAGE:-$(tests/fixtures/debian-root.sh base)}
MEM=${MEM:-1024}
command -v mksquashfs >/dev/null || die "mksquashfs is missing (apt install squashfs-tools)"

QEMU=$(tests/fixtures/qemu.sh)
ROOT=$(tests/fixtures/boot-root.sh root)
KIT=$(tests/fixtures/boot-root.sh initrd "$SEMITHIN")
ROMS=$(dirname "$QEMU")/root/usr/lib/ipxe/qemu
[ -d "$ROMS" ] || ROMS=/usr/lib/ipxe/qemu
[ -f "$ROMS/pxe-e1000.rom" ] || die "no iPXE ROM pxe-e1000.rom in $ROMS"
WORK=$(mktemp -d /var/tmp/semithin-netboot.XXXXXX)
SERVER_PID=
cleanup() {
  [ -z "$SERVER_PID" ] || kill "$SERVER_PID" 2>/dev/null || true
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }

# The server, on a free loopback port.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DATA=$WORK/server
"$SEMITHIN" serve --data "$DATA" --listen "127.0.0.1:$PORT" --netboot \
  --netboot-default bench/live --netboot-cmdline "console=ttyS0 panic=-1" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/api/v1/health')" 2>/dev/null && break
  sleep 0.2
done
TOKEN=$(cat "$DATA/admin-token")
export SEMITHIN_REPO=$DATA/repo SEMITHIN_SERVER=http://127.0.0.1:$PORT SEMITHIN_ADMIN_TOKEN=$TOKEN
stat_bytes() {
  python3 -c "import json,urllib.request; r=urllib.request.Request('$SEMITHIN_SERVER/api/v1/admin/stats', headers={'Authorization':'Bearer $TOKEN'}); print(json.load(urllib.request.urlopen(r))['boot_bytes_sent'])"
}

# The tree.
KVER=$(cd "$ROOT/lib/modules" && ls | sort -V | tail -1)
IMG=$WORK/img
cp -a "$IMAGE" "$IMG"
mkdir -p "$IMG/bin" "$IMG/sbin" "$IMG/boot" "$IMG/usr/lib/modules/$KVER" "$IMG/etc/semithin" \
  "$IMG/etc/initramfs-tools/hooks" "$IMG/run" "$IMG/proc" "$IMG/sys" "$IMG/dev"
cp "$ROOT/usr/bin/busybox" "$IMG/bin/busybox"
rm -f "$IMG/sbin/init"
cat >"$IMG/sbin/init" <<'EOF'
#!/bin/busybox sh
read -r up _ </proc/uptime
echo "BENCH-LIVE uptime=$up release=$(/bin/busybox cat /run/semithin/booted)"
/bin/busybox poweroff -f
EOF
chmod 0755 "$IMG/sbin/init"
cp "$DATA/repo/trust/metadata/1.root.json" "$IMG/etc/semithin/root.json"
cp packaging/initramfs-tools/hooks/semithin "$IMG/etc/initramfs-tools/hooks/semithin"
cp "$KIT/vmlinuz" "$IMG/boot/vmlinuz-$KVER"
mkdir -p "$WORK/extra/etc/semithin"
cp "$IMG/etc/semithin/root.json" "$WORK/extra/etc/semithin/root.json"
cp "$KIT/initrd.img" "$IMG/boot/initrd.img-$KVER"
truncate -s %512 "$IMG/boot/initrd.img-$KVER"
(cd "$WORK/extra" && find etc | "$ROOT/usr/bin/busybox" cpio -o -H newc 2>/dev/null) >>"$IMG/boot/initrd.img-$KVER"
files=$(find "$IMG" | wc -l)
bytes=$(du -sb --apparent-size "$IMG" | cut -f1)

say "commit"
ID=$("$SEMITHIN" commit "$IMG" --channel bench/live --new-channel --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["commit"])')

# 1. squashfs: semithin's (from the store) and mksquashfs's (from the directory), page cache warm.
sync
t0=$(date +%s.%N)
"$SEMITHIN" export "$ID" --format squashfs "$WORK/semithin.sqfs" >/dev/null 2>&1
t1=$(date +%s.%N)
mksquashfs "$IMG" "$WORK/mk.sqfs" -comp zstd -noappend -quiet >/dev/null
t2=$(date +%s.%N)
SQ_S=$(stat -c %s "$WORK/semithin.sqfs")
MK_S=$(stat -c %s "$WORK/mk.sqfs")
SQ_T=$(secs "$t0" "$t1")
MK_T=$(secs "$t1" "$t2")
say "squashfs: semithin $SQ_S bytes in $SQ_T s, mksquashfs $MK_S bytes in $MK_T s"

# 2. publish with the boot artifacts.
t0=$(date +%s.%N)
"$SEMITHIN" publish bench/live >"$WORK/publish.out" 2>"$WORK/publish.err" || die "publish failed: $(cat "$WORK/publish.err")"
t1=$(date +%s.%N)
PUB_T=$(secs "$t0" "$t1")
read -r K_L I_L S_L < <(python3 - "$DATA/repo/trust/metadata" "$ID" <<'EOF'
import json, os, sys
m, rid = sys.argv[1], sys.argv[2]
n = max(int(f.split(".")[0]) for f in os.listdir(m) if f.endswith(".targets.json") and f.split(".")[0].isdigit())
t = json.load(open(f"{m}/{n}.targets.json"))["signed"]["targets"]
print(*(t[f"boot/{rid}/{x}"]["length"] for x in ("vmlinuz", "initrd.img", "root.squashfs")))
EOF
)
WANT=$((K_L + I_L + S_L))

# 3. the network boot.
before=$(stat_bytes)
LOG=$WORK/console.log
t0=$(date +%s.%N)
timeout 900 "$QEMU" -nographic -no-reboot -monitor none -m "$MEM" -serial "file:$LOG" -boot n \
  -netdev "user,id=n0,bootfile=http://10.0.2.2:$PORT/boot/ipxe" \
  -device "e1000,netdev=n0,mac=52:54:00:be:00:01,romfile=$ROMS/pxe-e1000.rom" </dev/null >/dev/null 2>&1 ||
  die "qemu failed or timed out: $(tail -5 "$LOG")"
t1=$(date +%s.%N)
grep -q "BENCH-LIVE" "$LOG" || die "the release was not booted: $(tr -d '\r' <"$LOG" | grep semithin | tail -5)"
grep -q "squashfs of release ${ID:0:12} verified" "$LOG" || die "no verification line on the console"
UP=$(tr -d '\r' <"$LOG" | sed -n 's/^BENCH-LIVE uptime=\([0-9.]*\).*/\1/p')
SENT=$(($(stat_bytes) - before))
BOOT_T=$(secs "$t0" "$t1")

echo "## $(date -u '+%Y-%m-%d %H:%M UTC') — network boot: \`SEMITHIN=$(basename "$SEMITHIN") bench/netboot.sh\`"
echo
echo "- machine: $(nproc) cores, $(uname -r), qemu $("$QEMU" --version | head -1 | awk '{print $4}') under TCG (no KVM), -m $MEM; $(mksquashfs -version 2>&1 | head -1), $(tar2sqfs --version 2>&1 | head -1)"
echo "- tree: $(basename "$IMAGE") with busybox, a reporting init, kernel $KVER and the boot fixture's initramfs as the image's own: $files entries, $bytes bytes (apparent size)"
echo
echo "| squashfs of the release | bytes | wall s |"
echo "| --- | ---: | ---: |"
echo "| \`semithin export --format squashfs\` (tar2sqfs, zstd; from the store) | $SQ_S | $SQ_T |"
echo "| \`mksquashfs DIR OUT -comp zstd\` (defaults otherwise; from the directory) | $MK_S | $MK_T |"
echo
echo "- \`semithin publish\` with the boot artifacts (squashfs made, the image's own initrd and kernel copied, hashed, signed): $PUB_T s"
echo "- network boot (qemu start to power-off: iPXE, DHCP, kernel and initrd over HTTP, squashfs fetched and verified, init): $BOOT_T s wall, init at $UP s uptime"
echo "- bytes of boot artifacts the server sent for that boot: $SENT; the kernel ($K_L), initrd ($I_L) and squashfs ($S_L) once: $WANT ($(awk -v a="$SENT" -v b="$WANT" 'BEGIN {printf "%.3f", a / b}') times)"
