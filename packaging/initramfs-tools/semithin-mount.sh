# semithin-mount.sh: boot the semithin agent's current deployment (docs/BOOT.md).
#
# POSIX sh functions, sourced by the initramfs-tools boot script (scripts/local-bottom/semithin)
# and by the tests (crates/semithin/tests/it/packaging.rs). They use only mount, umount,
# readlink, mkdir and the shell itself, with the option forms that util-linux, busybox and klibc
# mount all take (-o bind, -o move, -o remount,...; no long options).
#
# Every function checks everything it can before it mounts anything. On a problem it prints why
# on stderr ("semithin: ..."), undoes what it mounted and returns non-zero, so the caller can
# boot the root partition as it is.
#
#   semithin_resolve PART STATE [INIT]
#       Finds the deployment STATE/current points at on the partition mounted at PART.
#       Sets SEMITHIN_ID (the commit id) and SEMITHIN_DEPLOYMENT (its directory). Mounts nothing.
#
#   semithin_mount PART STATE NEWROOT [INIT]
#       Mounts, the partition staying where it is (PART):
#         NEWROOT       PART/STATE/deployments/ID, read-only
#         NEWROOT/etc   overlayfs: the deployment's etc below, PART/STATE/overlay/etc/upper above
#                       (work directory PART/STATE/overlay/etc/work): writable, kept across
#                       boots and releases
#         NEWROOT/var   PART/var, read-write: the partition's own /var, so a STATE under /var
#                       (the default /var/lib/semithin) is at the same path in the booted system
#
#   semithin_boot ROOTMNT STATE SYSROOT [INIT]
#       The initramfs case: the partition is mounted at ROOTMNT, which must become the new root.
#       Remounts the partition read-write if it is read-only, moves it to SYSROOT, and assembles
#       the new root at ROOTMNT with semithin_mount. On failure after the move, moves the
#       partition back (and read-only again if it was); returns 2 if even that fails.
#
# STATE is the agent's state directory as a path on the partition (/var/lib/semithin); INIT, when
# given, is a program (/sbin/init) that must exist in the deployment.

semithin_say() {
	echo "semithin: $*" >&2
}

semithin_resolve() {
	_sm_part=$1
	_sm_state=$2
	_sm_init=${3:-}
	SEMITHIN_ID=
	SEMITHIN_DEPLOYMENT=
	case $_sm_state in
	/*) ;;
	*)
		semithin_say "the state directory '$_sm_state' is not an absolute path"
		return 1
		;;
	esac
	case $_sm_state in
	*[!A-Za-z0-9/._-]* | */../* | */.. | */./* | */.)
		semithin_say "the state directory '$_sm_state' must be a plain path of letters, digits and / . _ -"
		return 1
		;;
	esac
	case $_sm_part in
	*[,:]*)
		semithin_say "the partition's mount point '$_sm_part' holds ',' or ':', which overlayfs options cannot take"
		return 1
		;;
	esac
	_sm_link=$_sm_part$_sm_state/current
	if [ ! -L "$_sm_link" ]; then
		if [ -e "$_sm_link" ]; then
			semithin_say "$_sm_link is not a symlink"
		else
			semithin_say "no deployment is current ($_sm_link does not exist)"
		fi
		return 1
	fi
	if ! _sm_target=$(readlink "$_sm_link"); then
		semithin_say "cannot read the link $_sm_link"
		return 1
	fi
	_sm_id=${_sm_target#deployments/}
	_sm_bad=
	if [ "$_sm_id" = "$_sm_target" ] || [ ${#_sm_id} -ne 64 ]; then
		_sm_bad=y
	fi
	case $_sm_id in
	*[!0-9a-f]*) _sm_bad=y ;;
	esac
	if [ -n "$_sm_bad" ]; then
		semithin_say "$_sm_link points at '$_sm_target', not at deployments/ID (ID: 64 hex digits)"
		return 1
	fi
	_sm_dep=$_sm_part$_sm_state/deployments/$_sm_id
	if [ -L "$_sm_dep" ] || [ ! -d "$_sm_dep" ]; then
		semithin_say "$_sm_link points at deployments/$_sm_id, which is not a directory"
		return 1
	fi
	for _sm_d in etc var; do
		if [ -L "$_sm_dep/$_sm_d" ] || [ ! -d "$_sm_dep/$_sm_d" ]; then
			semithin_say "deployment $_sm_id has no /$_sm_d directory to mount on"
			return 1
		fi
	done
	if [ -n "$_sm_init" ] && [ ! -e "$_sm_dep$_sm_init" ] && [ ! -L "$_sm_dep$_sm_init" ]; then
		semithin_say "deployment $_sm_id has no $_sm_init"
		return 1
	fi
	if [ -L "$_sm_part/var" ] || [ ! -d "$_sm_part/var" ]; then
		semithin_say "the root partition has no /var directory to mount as /var"
		return 1
	fi
	SEMITHIN_ID=$_sm_id
	SEMITHIN_DEPLOYMENT=$_sm_dep
	return 0
}

semithin_mount() {
	if [ $# -lt 3 ]; then
		semithin_say "usage: semithin_mount PART STATE NEWROOT [INIT]"
		return 1
	fi
	semithin_resolve "$1" "$2" "${4:-}" || return 1
	_sm_new=$3
	_sm_ov=$1$2/overlay/etc
	if [ ! -d "$_sm_new" ]; then
		semithin_say "the new root $_sm_new is not a directory"
		return 1
	fi
	if ! mkdir -p "$_sm_ov/upper" "$_sm_ov/work"; then
		semithin_say "cannot make $_sm_ov/upper and $_sm_ov/work (is the partition read-only?)"
		return 1
	fi
	if ! mount -o bind "$SEMITHIN_DEPLOYMENT" "$_sm_new"; then
		semithin_say "cannot bind-mount $SEMITHIN_DEPLOYMENT on $_sm_new"
		return 1
	fi
	if ! mount -o remount,bind,ro "$_sm_new"; then
		semithin_say "cannot make $_sm_new read-only"
		umount "$_sm_new"
		return 1
	fi
	if ! mount -t overlay -o "lowerdir=$SEMITHIN_DEPLOYMENT/etc,upperdir=$_sm_ov/upper,workdir=$_sm_ov/work" overlay "$_sm_new/etc"; then
		semithin_say "cannot mount the /etc overlay (is the overlay module there? upper: $_sm_ov/upper)"
		umount "$_sm_new"
		return 1
	fi
	if ! mount -o bind "$1/var" "$_sm_new/var"; then
		semithin_say "cannot bind-mount $1/var on $_sm_new/var"
		umount "$_sm_new/etc"
		umount "$_sm_new"
		return 1
	fi
	semithin_say "root is deployment $SEMITHIN_ID (read-only), /etc an overlay kept in $2/overlay/etc, /var the root partition's"
	return 0
}

# Whether the file system mounted at $1 is mounted read-only (from /proc/mounts).
semithin_is_ro() {
	_sm_ro=n
	while read -r _sm_dev _sm_mnt _sm_type _sm_opts _sm_rest; do
		if [ "$_sm_mnt" = "$1" ]; then
			case ",$_sm_opts," in
			*,ro,*) _sm_ro=y ;;
			*) _sm_ro=n ;;
			esac
		fi
	done </proc/mounts
	[ "$_sm_ro" = y ]
}

semithin_boot() {
	if [ $# -lt 3 ]; then
		semithin_say "usage: semithin_boot ROOTMNT STATE SYSROOT [INIT]"
		return 1
	fi
	_sb_root=$1
	_sb_state=$2
	_sb_sys=$3
	_sb_init=${4:-}
	semithin_resolve "$_sb_root" "$_sb_state" "$_sb_init" || return 1
	# The early boot moves /dev, /proc, /sys and /run onto the new root.
	for _sb_d in dev proc sys run; do
		if [ -L "$SEMITHIN_DEPLOYMENT/$_sb_d" ] || [ ! -d "$SEMITHIN_DEPLOYMENT/$_sb_d" ]; then
			semithin_say "deployment $SEMITHIN_ID has no /$_sb_d directory"
			return 1
		fi
	done
	_sb_was_ro=n
	if semithin_is_ro "$_sb_root"; then
		_sb_was_ro=y
		if ! mount -o remount,rw "$_sb_root"; then
			semithin_say "cannot remount the root partition read-write (the /etc overlay needs it)"
			return 1
		fi
	fi
	if ! mkdir -p "$_sb_sys" || ! mount -o move "$_sb_root" "$_sb_sys"; then
		semithin_say "cannot move the root partition from $_sb_root to $_sb_sys"
		[ "$_sb_was_ro" = y ] && mount -o remount,ro "$_sb_root"
		return 1
	fi
	if ! semithin_mount "$_sb_sys" "$_sb_state" "$_sb_root" "$_sb_init"; then
		if ! mount -o move "$_sb_sys" "$_sb_root"; then
			semithin_say "cannot move the root partition back from $_sb_sys to $_sb_root"
			return 2
		fi
		[ "$_sb_was_ro" = y ] && mount -o remount,ro "$_sb_root"
		return 1
	fi
	return 0
}
