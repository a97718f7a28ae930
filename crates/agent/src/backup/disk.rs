//! Whether the backup directory is the backup disk: a mount point of its own file system, not
//! the state directory's, mounted read-write. A disk that is missing leaves an empty directory
//! on the root file system behind (or none); writing the backup there would fill the root file
//! system and give a false sense of safety, so it is never used.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What is wrong with the backup disk, in a word (a warning is logged once per change of it)
/// and in a sentence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unusable {
    pub kind: &'static str,
    pub reason: String,
}

fn unusable(kind: &'static str, reason: String) -> Unusable {
    Unusable { kind, reason }
}

/// Ok when `dir` can take the backup of the state directory `state`.
pub fn check(dir: &Path, state: &Path) -> Result<(), Unusable> {
    let shown = dir.display();
    let md = match std::fs::metadata(dir) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(unusable(
                "missing",
                format!("{shown} does not exist: the backup disk is missing"),
            ));
        }
        Err(e) => return Err(unusable("missing", format!("{shown}: {e}"))),
    };
    if !md.is_dir() {
        return Err(unusable("missing", format!("{shown} is not a directory")));
    }
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    match is_mount_point(&real) {
        Ok(true) => {}
        Ok(false) => {
            return Err(unusable(
                "unmounted",
                format!(
                    "{shown} is not a mount point: the backup disk is not mounted (the directory \
                     below it is not used)"
                ),
            ));
        }
        Err(e) => {
            return Err(unusable(
                "unmounted",
                format!("cannot tell whether {shown} is mounted: {e}"),
            ));
        }
    }
    if std::fs::metadata(state).is_ok_and(|s| s.dev() == md.dev()) {
        return Err(unusable(
            "same-disk",
            format!(
                "{shown} is on the file system of the state directory {}: a backup there is no \
                 backup",
                state.display()
            ),
        ));
    }
    if let Ok(vfs) = rustix::fs::statvfs(&real)
        && vfs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY)
    {
        return Err(unusable(
            "read-only",
            format!("{shown} is mounted read-only"),
        ));
    }
    Ok(())
}

/// Whether `dir` (a canonical path) is where something is mounted, from the kernel's
/// `/proc/self/mountinfo`.
fn is_mount_point(dir: &Path) -> std::io::Result<bool> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mount_points(&text).any(|m| m == dir))
}

/// The mount points of a mountinfo text (field 5, with the kernel's octal escapes undone).
fn mount_points(text: &str) -> impl Iterator<Item = PathBuf> + '_ {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_read_with_their_escapes() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                    90 22 0:50 / /mnt/my\\040backup rw - tmpfs tmpfs rw\n";
        let m: Vec<PathBuf> = mount_points(text).collect();
        assert_eq!(m, vec![PathBuf::from("/"), PathBuf::from("/mnt/my backup")]);
    }

    #[test]
    fn a_missing_or_unmounted_disk_is_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("backup");
        assert_eq!(check(&gone, dir.path()).unwrap_err().kind, "missing");
        std::fs::create_dir(&gone).unwrap();
        let e = check(&gone, dir.path()).unwrap_err();
        assert_eq!(e.kind, "unmounted", "{e:?}");
        assert!(e.reason.contains("not a mount point"), "{e:?}");
    }

    /// A mount unmounted (lazily) when dropped.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }

    fn mount(args: &[&str], at: &Path) -> Mounted {
        let ok = std::process::Command::new("mount")
            .args(args)
            .arg(at)
            .status()
            .unwrap();
        assert!(ok.success(), "mount {args:?} {}", at.display());
        Mounted(at.to_owned())
    }

    #[test]
    fn a_mount_of_the_state_directorys_file_system_or_a_read_only_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (state, backup) = (dir.path().join("state"), dir.path().join("backup"));
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&backup).unwrap();
        // a bind mount of the state directory's own file system: a mount point, same disk
        let bind = mount(&["--bind", state.to_str().unwrap()], &backup);
        let e = check(&backup, &state).unwrap_err();
        assert_eq!(e.kind, "same-disk", "{e:?}");
        drop(bind);
        let disk = mount(&["-t", "tmpfs", "-o", "size=1M", "tmpfs"], &backup);
        assert_eq!(check(&backup, &state), Ok(()));
        let _ro = mount(&["-o", "remount,ro"], &backup);
        assert_eq!(check(&backup, &state).unwrap_err().kind, "read-only");
        drop(disk);
    }
}
