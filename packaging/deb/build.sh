#!/usr/bin/env bash
# Builds the Debian package of semithin from a built binary, with dpkg-deb (docs/OPERATIONS.md):
#
#   packaging/deb/build.sh BINARY OUTDIR
#
# The package holds:
#   /usr/bin/semithin                       the binary (debug information stripped)
#   /lib/systemd/system/semithin-*          the units of packaging/systemd/, for /usr/bin/semithin
#   /etc/semithin/{server,agent}.toml       the example settings, as conffiles
#   /usr/share/man/man1/semithin*.1.gz      `semithin manpages`
#   bash, zsh and fish completions          `semithin completions SHELL`
#   /usr/share/semithin/initramfs-tools/    the boot hook and scripts, to copy into
#                                           /etc/initramfs-tools/ on machines that boot
#                                           deployments (docs/BOOT.md, "Install")
#   /usr/lib/semithin/semithin-mount.sh     the boot script's mount functions
#   /usr/lib/semithin/semithin-initrd       what the initramfs runs (the hook copies it)
# Its dependencies are what dpkg-shlibdeps finds the binary needs. No unit is enabled or started:
# a machine is a server or a machine of the fleet, the admin says which (`systemctl enable`).
# The maintainer scripts make the system user `semithin` the server unit runs as.
#
# Environment: DEB_COMPRESS  dpkg-deb's compressor (default xz; the tests use gzip, quicker)
# Prints the path of the .deb.
set -euo pipefail

die() {
  printf 'build-deb: error: %s\n' "$*" >&2
  exit 1
}
[ $# -eq 2 ] || die "usage: $0 BINARY OUTDIR"
bin=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
pkg=$here/..
for t in dpkg-deb dpkg-shlibdeps objcopy gzip; do
  command -v "$t" >/dev/null || die "$t is not installed (apt install dpkg-dev binutils gzip)"
done
[ -x "$bin" ] || die "no executable at $bin"
version=$("$bin" --version | awk '{print $2}')
case $version in
[0-9]*) ;;
*) die "cannot read the version from $bin --version" ;;
esac
arch=$(dpkg --print-architecture)
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/semithin-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/semithin" \
  "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d" \
  "$root/usr/share/doc/semithin" "$root/usr/share/semithin" "$root/usr/lib/semithin"

objcopy --strip-debug "$bin" "$root/usr/bin/semithin"
chmod 0755 "$root/usr/bin/semithin"
# the part of semithin the initramfs runs (cargo builds it beside the binary)
small=$(dirname "$bin")/semithin-initrd
[ -x "$small" ] || die "no semithin-initrd beside $bin (cargo build --release -p semithin builds both)"
objcopy --strip-debug "$small" "$root/usr/lib/semithin/semithin-initrd"
chmod 0755 "$root/usr/lib/semithin/semithin-initrd"
for u in "$pkg"/systemd/*; do
  sed 's|/usr/local/bin/semithin|/usr/bin/semithin|g' "$u" >"$root/lib/systemd/system/$(basename "$u")"
done
install -m 0644 "$pkg/server.toml" "$root/etc/semithin/server.toml"
install -m 0600 "$pkg/agent.toml" "$root/etc/semithin/agent.toml"
"$bin" manpages "$work/man" >/dev/null
for m in "$work"/man/*.1; do
  gzip -9n <"$m" >"$root/usr/share/man/man1/$(basename "$m").gz"
done
"$bin" completions bash >"$root/usr/share/bash-completion/completions/semithin"
"$bin" completions zsh >"$root/usr/share/zsh/vendor-completions/_semithin"
"$bin" completions fish >"$root/usr/share/fish/vendor_completions.d/semithin.fish"
cp -r "$pkg/initramfs-tools" "$root/usr/share/semithin/initramfs-tools"
install -m 0644 "$pkg/initramfs-tools/semithin-mount.sh" "$root/usr/lib/semithin/semithin-mount.sh"
cat >"$root/usr/share/doc/semithin/copyright" <<'COPY'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: semithin

Files: *
Copyright: the semithin developers
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPY
find "$root" -type d -exec chmod 0755 {} +
find "$root/usr/share" "$root/lib" -type f -exec chmod 0644 {} +
chmod 0755 "$root/usr/share/semithin/initramfs-tools/hooks/"* "$root/usr/share/semithin/initramfs-tools/scripts/"*/*

# What the binary needs, as dpkg-shlibdeps finds it.
mkdir -p "$work/src/debian"
printf 'Source: semithin\n\nPackage: semithin\nArchitecture: any\n' >"$work/src/debian/control"
deps=$(cd "$work/src" && dpkg-shlibdeps -O -e "$root/usr/bin/semithin" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$deps" ] || die "dpkg-shlibdeps found no dependencies for $bin"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CTRL
Package: semithin
Version: $version
Architecture: $arch
Maintainer: semithin developers <semithin@localhost>
Installed-Size: $size
Depends: $deps
Recommends: squashfs-tools-ng, zstd
Suggests: mmdebstrap, debootstrap, initramfs-tools, busybox
Section: admin
Priority: optional
Description: keep a fleet of Linux machines on golden images
 semithin stores root filesystems as content-addressed versions, signs releases
 (The Update Framework), and serves them to machines whose agent pulls only what
 changed, verifies it, switches atomically, boots it and rolls back by itself.
 One binary: the admin commands, the server (semithin serve) and the agent.
CTRL
printf '/etc/semithin/server.toml\n/etc/semithin/agent.toml\n' >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/postinst" <<'POST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
	# The server unit runs as this user (packaging/systemd/semithin-server.service).
	if ! getent passwd semithin >/dev/null; then
		useradd --system --user-group --home-dir /var/lib/semithin-server --no-create-home \
			--shell /usr/sbin/nologin semithin
	fi
	chgrp semithin /etc/semithin/server.toml
	chmod 0640 /etc/semithin/server.toml
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload || true
	fi
fi
POST
cat >"$root/DEBIAN/postrm" <<'POST'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
# The data directories (/var/lib/semithin-server, /var/lib/semithin) are kept, also on purge:
# they hold the fleet, the releases and the keys.
POST
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"
(cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
deb=$out/semithin_${version}_${arch}.deb
dpkg-deb --root-owner-group -Z"${DEB_COMPRESS:-xz}" --build "$root" "$deb" >/dev/null
printf '%s\n' "$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")"
