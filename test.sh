#!/usr/bin/env bash
# Runs the whole test suite of semithin, also on a fresh Debian machine:
#   1. installs what the tests need (Debian packages, cargo-nextest) if it is missing,
#   2. builds the Debian root filesystem fixtures, a local Debian mirror and qemu once (cached,
#      see tests/fixtures/debian-root.sh, debian-mirror.sh and qemu.sh),
#   3. cargo fmt --check, cargo clippy -D warnings,
#   4. a short run of every fuzz target (fuzz/run.sh; FUZZ_SECONDS each, default 8),
#   5. cargo nextest run (last, so its summary closes the output).
# Usage: sudo ./test.sh [EXTRA NEXTEST ARGS...]   (must run as root: chroot, mounts, ownership)
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*" >&2; }
die() {
  printf 'test.sh: error: %s\n' "$*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || die "must be run as root (the tests chroot, mount and create files owned by other users)"
command -v cargo >/dev/null || die "cargo is not installed"

# chromium and chromium-driver: the dashboard's tests in a real browser. ovmf (UEFI for qemu),
# systemd-boot-efi, dosfstools, mtools and fdisk: `image disk` and the boots of its disks (they
# only add files; qemu itself is unpacked by tests/fixtures/qemu.sh).
DEB_PACKAGES=(debootstrap mmdebstrap openssl squashfs-tools squashfs-tools-ng attr acl libcap2-bin zstd python3 python3-venv faketime time apt-utils gpg e2fsprogs binutils
  chromium chromium-driver ovmf systemd-boot-efi dosfstools mtools fdisk xz-utils iproute2 aria2)

step "checking Debian packages: ${DEB_PACKAGES[*]}"
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing missing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "all present" >&2
fi

step "checking cargo-nextest"
if ! cargo nextest --version >/dev/null 2>&1; then
  step "installing cargo-nextest (cargo install --locked cargo-nextest)"
  cargo install --locked cargo-nextest
fi
cargo nextest --version >&2

step "building the Debian root filesystem fixture (cached after the first run)"
tests/fixtures/debian-root.sh base >/dev/null
step "building the Debian root with systemd that the slow_ tests boot with systemd-nspawn (cached)"
tests/fixtures/debian-root.sh systemd >/dev/null
step "building the Debian root with a kernel and initramfs-tools that the slow_boot tests boot under qemu (cached)"
tests/fixtures/debian-root.sh boot >/dev/null
step "checking qemu-system-x86_64 (unpacked from Debian's packages into the cache when it is not installed)"
tests/fixtures/qemu.sh >/dev/null
step "building the local signed Debian mirror the image tests build from (cached)"
tests/fixtures/debian-mirror.sh >/dev/null
step "preparing python-tuf, the reference TUF implementation (cached after the first run)"
tests/fixtures/python-tuf.sh >/dev/null
step "preparing schemathesis, which fuzzes the server against its OpenAPI description (cached)"
tests/fixtures/schemathesis.sh >/dev/null

step "cargo fmt --all -- --check (and the fuzz crate, its own workspace)"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "fuzz/run.sh ${FUZZ_SECONDS:-8}: every fuzz target briefly (nightly, cargo-fuzz; built in \$CARGO_TARGET_DIR/fuzz)"
fuzz/run.sh "${FUZZ_SECONDS:-8}"

step "cargo nextest run --workspace --no-fail-fast${*:+ $*}"
cargo nextest run --workspace --no-fail-fast "$@"
