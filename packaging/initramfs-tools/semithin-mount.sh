# semithin-mount.sh: boot the semithin agent's current deployment (docs/BOOT.md).
#
# POSIX sh functions, sourced by the initramfs-tools boot script (scripts/local-bottom/semithin)
# and by the tests (crates/semithin/tests/it/packaging.rs and fleet.rs). They use mount, umount,
# readlink, mkdir and the shell itself, with the option forms that util-linux, busybox and klibc
# mount all take (-o bind, -o move, -o remount,...; no long options); and, for a release under
# trial, ln -s, mv -f -T, rm -f and sync, as busybox and coreutils have them (klibc's mv has no
# -T: the hook requires busybox).
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
#   semithin_mount_resolved PART STATE NEWROOT
#       The same, once semithin_resolve has checked the deployment and set SEMITHIN_ID (PART
#       may have moved since: SEMITHIN_DEPLOYMENT is set again from PART).
#
#   semithin_boot ROOTMNT STATE SYSROOT [INIT]
#       The initramfs case: the partition is mounted at ROOTMNT, which must become the new root.
#       Remounts the partition read-write if it is read-only, moves it to SYSROOT, and assembles
#       the new root at ROOTMNT with semithin_mount. On failure after the move, moves the
#       partition back (and read-only again if it was); returns 2 if even that fails. Before all
#       that, when STATE/trial exists, it remounts the partition read-write and runs
#       semithin_trial with $SEMITHIN_TRIES (the boot script sets it from semithin.tries=); a
#       release under trial whose boot cannot be counted is not booted. With SEMITHIN_ENTRY=ID
#       (the boot script sets it from semithin.deployment=) it runs semithin_entry first. With SEMITHIN_VERIFY=full
#       or quick (the boot script sets it from semithin.verify=; unset means off) it runs
#       semithin_verify once the partition is writable, and boots nothing of a deployment that
#       fails it.
#
#   semithin_entry PART STATE ID
#       The boot loader booted the entry of deployment ID (semithin.deployment=ID: its kernel
#       and initrd, docs/BOOT.md). When a release is under trial, current points at it and ID
#       is another deployment, the boot loader went back (the trial's one boot was used up
#       without a confirmation): STATE/trial-failed says so and current is switched back to ID
#       (to PREVIOUS when ID is gone). Otherwise, when current points elsewhere and
#       deployments/ID exists, current is switched to ID: the kernel that runs is ID's, so
#       ID's tree (its modules) is the one to boot. Same file handling as semithin_trial.
#
#   semithin_verify PART STATE
#       Verifies the deployment STATE/current points at against its release with the agent's
#       binary ($SEMITHIN_BIN, default /usr/lib/semithin/semithin, where the hook puts it):
#       `semithin agent --state PART/STATE boot-verify` puts back from the local store what
#       differs, moves what is not the release's into STATE/quarantine/, and leaves what it
#       found in STATE/boot-verify.json for the agent to report. With SEMITHIN_VERIFY=quick it
#       passes --quick: a deployment whose metadata matches the seal (STATE/seals/ID) of its
#       last full verification is booted without reading its files. Returns non-zero, having said
#       why, when the deployment could not be verified or put right: it must not be booted. The
#       partition must be writable.
#
#   semithin_trial PART STATE [TRIES]
#       Boot counting for a release under trial. While a release it switched to is not yet
#       confirmed healthy, the agent keeps STATE/trial, one line "RELEASE PREVIOUS" (PREVIOUS "-"
#       when there was none), and removes it once the release is confirmed or rolled back. When
#       STATE/current points at RELEASE, this boot is counted in STATE/trial-boots ("RELEASE N");
#       once RELEASE has been booted TRIES times (default 1) without being confirmed, current is
#       switched back to PREVIOUS instead (a new symlink renamed over it; removed when PREVIOUS
#       is "-" or missing) and STATE/trial-failed says why ("RELEASE REASON"), for the agent to
#       record as a failure. Every file is written under a temporary name, synced and renamed;
#       the partition must be writable. Returns non-zero, having said why, only when it could
#       not write what it had to.
#
# STATE is the agent's state directory as a path on the partition (/var/lib/semithin); INIT, when
# given, is a program (/sbin/init) that must exist in the deployment.

semithin_say() {
	echo "semithin: $*" >&2
}

# Whether $1 is a usable state directory path (says why not).
semithin_check_state() {
	case $1 in
	/*) ;;
	*)
		semithin_say "the state directory '$1' is not an absolute path"
		return 1
		;;
	esac
	case $1 in
	*[!A-Za-z0-9/._-]* | */../* | */.. | */./* | */.)
		semithin_say "the state directory '$1' must be a plain path of letters, digits and / . _ -"
		return 1
		;;
	esac
	return 0
}

# Whether $1 is a release id: 64 lowercase hex digits.
semithin_is_id() {
	[ ${#1} -eq 64 ] || return 1
	case $1 in
	*[!0-9a-f]*) return 1 ;;
	esac
	return 0
}

semithin_resolve() {
	_sm_part=$1
	_sm_state=$2
	_sm_init=${3:-}
	SEMITHIN_ID=
	SEMITHIN_DEPLOYMENT=
	semithin_check_state "$_sm_state" || return 1
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
	semithin_mount_resolved "$1" "$2" "$3"
}

# semithin_mount once semithin_resolve checked the deployment SEMITHIN_ID on PART.
semithin_mount_resolved() {
	SEMITHIN_DEPLOYMENT=$1$2/deployments/$SEMITHIN_ID
	_sm_new=$3
	_sm_ov=$1$2/overlay/etc
	if [ ! -d "$_sm_new" ]; then
		semithin_say "the new root $_sm_new is not a directory"
		return 1
	fi
	# Every program started costs at boot (under an emulator, tens of milliseconds each): none
	# for what is there already.
	if { [ ! -d "$_sm_ov/upper" ] || [ ! -d "$_sm_ov/work" ]; } && ! mkdir -p "$_sm_ov/upper" "$_sm_ov/work"; then
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

# Replaces the file $1 with the line $2: written under a temporary name beside it, synced,
# renamed over it, synced again.
semithin_put() {
	_sp_tmp=${1%/*}/.${1##*/}.tmp
	if ! printf '%s\n' "$2" >"$_sp_tmp"; then
		semithin_say "cannot write $_sp_tmp"
		return 1
	fi
	sync
	if ! mv -f "$_sp_tmp" "$1"; then
		semithin_say "cannot rename $_sp_tmp to $1"
		return 1
	fi
	sync
}

semithin_trial() {
	if [ $# -lt 2 ]; then
		semithin_say "usage: semithin_trial PART STATE [TRIES]"
		return 1
	fi
	_st_state=$2
	_st_tries=${3:-1}
	semithin_check_state "$_st_state" || return 1
	case $_st_tries in
	'' | *[!0-9]* | 0 | 0*)
		semithin_say "semithin.tries=$_st_tries is not a number of at least 1: using 1"
		_st_tries=1
		;;
	esac
	_st_dir=$1$_st_state
	[ -f "$_st_dir/trial" ] || return 0
	_st_rel=
	_st_prev=
	read -r _st_rel _st_prev _st_rest <"$_st_dir/trial" || true
	if ! semithin_is_id "$_st_rel" || { [ "$_st_prev" != - ] && ! semithin_is_id "$_st_prev"; }; then
		semithin_say "$_st_dir/trial does not hold 'RELEASE PREVIOUS': this boot is not counted"
		return 0
	fi
	# Not switched to yet, or switched back already: nothing to count.
	_st_cur=$(readlink "$_st_dir/current" 2>/dev/null) || _st_cur=
	[ "$_st_cur" = "deployments/$_st_rel" ] || return 0
	_st_n=0
	if [ -f "$_st_dir/trial-boots" ]; then
		_st_brel=
		_st_bn=
		read -r _st_brel _st_bn _st_rest <"$_st_dir/trial-boots" || true
		if [ "$_st_brel" = "$_st_rel" ]; then
			case $_st_bn in
			'' | *[!0-9]* | 0?*) ;;
			*) _st_n=$_st_bn ;;
			esac
		fi
	fi
	if [ "$_st_n" -lt "$_st_tries" ]; then
		_st_n=$((_st_n + 1))
		semithin_put "$_st_dir/trial-boots" "$_st_rel $_st_n" || return 1
		semithin_say "release $_st_rel is under trial: boot $_st_n of $_st_tries"
		return 0
	fi
	_st_reason="booted $_st_n time(s) without being confirmed healthy (semithin.tries=$_st_tries)"
	if [ "$_st_prev" = - ]; then
		_st_reason="$_st_reason; there was no previous deployment: the boot removed the current link"
	elif [ -L "$_st_dir/deployments/$_st_prev" ] || [ ! -d "$_st_dir/deployments/$_st_prev" ]; then
		_st_reason="$_st_reason; the previous deployment $_st_prev is missing: the boot removed the current link"
		_st_prev=-
	else
		_st_reason="$_st_reason; the boot switched back to $_st_prev"
	fi
	# The marker first: a boot cut short after it switches back again.
	semithin_put "$_st_dir/trial-failed" "$_st_rel $_st_reason" || return 1
	if [ "$_st_prev" = - ]; then
		if ! rm -f "$_st_dir/current"; then
			semithin_say "cannot remove $_st_dir/current"
			return 1
		fi
	else
		_st_tmp=$_st_dir/.current.boot.tmp
		rm -f "$_st_tmp"
		if ! ln -s "deployments/$_st_prev" "$_st_tmp" || ! mv -f -T "$_st_tmp" "$_st_dir/current"; then
			semithin_say "cannot switch $_st_dir/current back to deployments/$_st_prev"
			return 1
		fi
	fi
	sync
	semithin_say "release $_st_rel was $_st_reason"
	return 0
}

# Points STATE/current ($1) at deployments/$2 by renaming a new link over it, synced.
semithin_point() {
	_sp_tmp=${1%/*}/.current.boot.tmp
	rm -f "$_sp_tmp"
	if ! ln -s "deployments/$2" "$_sp_tmp" || ! mv -f -T "$_sp_tmp" "$1"; then
		semithin_say "cannot switch $1 to deployments/$2"
		return 1
	fi
	sync
}

semithin_entry() {
	if [ $# -lt 3 ]; then
		semithin_say "usage: semithin_entry PART STATE ID"
		return 1
	fi
	semithin_check_state "$2" || return 1
	_se_dir=$1$2
	_se_id=$3
	if ! semithin_is_id "$_se_id"; then
		semithin_say "semithin.deployment=$_se_id is not a deployment id (64 hex digits): booting what current names"
		return 0
	fi
	_se_cur=$(readlink "$_se_dir/current" 2>/dev/null) || _se_cur=
	[ "$_se_cur" = "deployments/$_se_id" ] && return 0
	_se_back=$_se_id
	if [ -L "$_se_dir/deployments/$_se_id" ] || [ ! -d "$_se_dir/deployments/$_se_id" ]; then
		_se_back=
	fi
	_se_rel=
	_se_prev=
	if [ -f "$_se_dir/trial" ]; then
		read -r _se_rel _se_prev _se_rest <"$_se_dir/trial" || true
	fi
	if semithin_is_id "$_se_rel" && [ "$_se_cur" = "deployments/$_se_rel" ]; then
		[ -n "$_se_back" ] || _se_back=$_se_prev
		_se_reason="the boot loader booted deployment $_se_id's entry, not the one of the release under trial: its one boot ended without the release being confirmed healthy"
		if semithin_is_id "$_se_back" && [ -d "$_se_dir/deployments/$_se_back" ]; then
			_se_reason="$_se_reason; the boot switched back to $_se_back"
		else
			_se_back=
			_se_reason="$_se_reason; no previous deployment: the boot removed the current link"
		fi
		semithin_put "$_se_dir/trial-failed" "$_se_rel $_se_reason" || return 1
		if [ -n "$_se_back" ]; then
			semithin_point "$_se_dir/current" "$_se_back" || return 1
		elif ! rm -f "$_se_dir/current"; then
			semithin_say "cannot remove $_se_dir/current"
			return 1
		fi
		sync
		semithin_say "release $_se_rel: $_se_reason"
		return 0
	fi
	if [ -z "$_se_back" ]; then
		semithin_say "the boot loader booted deployment $_se_id's entry, but deployments/$_se_id is missing: booting what current names"
		return 0
	fi
	semithin_point "$_se_dir/current" "$_se_id" || return 1
	semithin_say "the boot loader booted deployment $_se_id's entry: current now points at it (was '${_se_cur:-none}')"
	return 0
}

semithin_verify() {
	_sv_bin=${SEMITHIN_BIN:-/usr/lib/semithin/semithin}
	if [ ! -x "$_sv_bin" ]; then
		semithin_say "$_sv_bin is missing, so the deployment cannot be verified (semithin.verify=${SEMITHIN_VERIFY:-full}): rebuild the initramfs with the semithin hook"
		return 1
	fi
	if [ "${SEMITHIN_VERIFY:-full}" = quick ]; then
		"$_sv_bin" agent --state "$1$2" boot-verify --quick
	else
		"$_sv_bin" agent --state "$1$2" boot-verify
	fi || {
		semithin_say "the deployment failed its verification: it is not booted"
		return 1
	}
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

# Remounts $1 read-only again when $2 is y (it was read-only before semithin_boot).
semithin_undo_rw() {
	if [ "$2" = y ]; then
		mount -o remount,ro "$1"
	fi
	return 0
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
	_sb_was_ro=n
	# A release under trial: this boot is counted, or the trial given up and current switched
	# back. Both write to the partition.
	# With semithin.deployment=ID (SEMITHIN_ENTRY), the entry the boot loader booted comes first.
	if semithin_check_state "$_sb_state" 2>/dev/null && { [ -f "$_sb_root$_sb_state/trial" ] || [ -n "${SEMITHIN_ENTRY:-}" ]; }; then
		if semithin_is_ro "$_sb_root"; then
			if ! mount -o remount,rw "$_sb_root"; then
				semithin_say "cannot remount the root partition read-write to count this boot of a release under trial"
				return 1
			fi
			_sb_was_ro=y
		fi
		if [ -n "${SEMITHIN_ENTRY:-}" ] && ! semithin_entry "$_sb_root" "$_sb_state" "$SEMITHIN_ENTRY"; then
			semithin_undo_rw "$_sb_root" "$_sb_was_ro"
			return 1
		fi
		if [ -f "$_sb_root$_sb_state/trial" ] && ! semithin_trial "$_sb_root" "$_sb_state" "${SEMITHIN_TRIES:-1}"; then
			semithin_undo_rw "$_sb_root" "$_sb_was_ro"
			return 1
		fi
	fi
	if ! semithin_resolve "$_sb_root" "$_sb_state" "$_sb_init"; then
		semithin_undo_rw "$_sb_root" "$_sb_was_ro"
		return 1
	fi
	# The early boot moves /dev, /proc, /sys and /run onto the new root.
	for _sb_d in dev proc sys run; do
		if [ -L "$SEMITHIN_DEPLOYMENT/$_sb_d" ] || [ ! -d "$SEMITHIN_DEPLOYMENT/$_sb_d" ]; then
			semithin_say "deployment $SEMITHIN_ID has no /$_sb_d directory"
			semithin_undo_rw "$_sb_root" "$_sb_was_ro"
			return 1
		fi
	done
	if semithin_is_ro "$_sb_root"; then
		_sb_was_ro=y
		if ! mount -o remount,rw "$_sb_root"; then
			semithin_say "cannot remount the root partition read-write (the /etc overlay needs it)"
			return 1
		fi
	fi
	if [ "${SEMITHIN_VERIFY:-off}" != off ] && ! semithin_verify "$_sb_root" "$_sb_state"; then
		semithin_undo_rw "$_sb_root" "$_sb_was_ro"
		return 1
	fi
	if { [ ! -d "$_sb_sys" ] && ! mkdir -p "$_sb_sys"; } || ! mount -o move "$_sb_root" "$_sb_sys"; then
		semithin_say "cannot move the root partition from $_sb_root to $_sb_sys"
		semithin_undo_rw "$_sb_root" "$_sb_was_ro"
		return 1
	fi
	if ! semithin_mount_resolved "$_sb_sys" "$_sb_state" "$_sb_root"; then
		if ! mount -o move "$_sb_sys" "$_sb_root"; then
			semithin_say "cannot move the root partition back from $_sb_sys to $_sb_root"
			return 2
		fi
		semithin_undo_rw "$_sb_root" "$_sb_was_ro"
		return 1
	fi
	return 0
}
